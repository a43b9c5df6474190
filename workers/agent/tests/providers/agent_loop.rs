//! The loop core (run_turn) against the local providers: tools run, refused, limited.

use super::*;
use loong_worker_agent::client::BoxFuture;
use loong_worker_agent::turn::refusal;
use loong_worker_agent::{
    run_turn, ToolCall, ToolRunner, ToolSpec, TurnEvent, TurnLimits, TurnStop,
};

/// A tool runner that records its calls and answers from a closure.
struct Runner {
    ran: Mutex<Vec<(String, Value)>>,
}

impl ToolRunner for Runner {
    fn run<'a>(
        &'a self,
        call: &'a ToolCall,
        arguments: Value,
    ) -> BoxFuture<'a, Result<String, String>> {
        self.ran
            .lock()
            .expect("lock")
            .push((call.name.clone(), arguments.clone()));
        Box::pin(async move { Ok(format!("{{\"ok\":true,\"for\":{arguments}}}")) })
    }
}

fn weather_tools() -> Vec<ToolSpec> {
    ["get_weather", "get_time"]
        .into_iter()
        .map(|name| ToolSpec {
            name: name.into(),
            description: format!("{name} of a place"),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        })
        .collect()
}

async fn turn(
    provider: &dyn Provider,
    tools: &[ToolSpec],
    limits: TurnLimits,
) -> (
    Result<loong_worker_agent::TurnOutcome, ProviderError>,
    Vec<Message>,
    Vec<TurnEvent>,
    Runner,
) {
    let runner = Runner {
        ran: Mutex::new(vec![]),
    };
    let mut history = vec![Message::User {
        text: "weather in Paris?".into(),
    }];
    let mut events = Vec::new();
    let outcome = run_turn(
        provider,
        Some("be brief"),
        &mut history,
        tools,
        &runner,
        limits,
        &mut |e| events.push(e),
    )
    .await;
    (outcome, history, events, runner)
}

#[tokio::test]
async fn the_loop_runs_the_tool_and_hands_the_result_back_in_each_family() {
    let server = serve(vec![
        Reply::Sse(fixture("openai_tool_8_chunks.sse")),
        Reply::Sse(fixture("openai_text.sse")),
    ])
    .await;
    let (outcome, history, events, runner) = turn(
        &provider("oai", &config(Kind::Openai, &server)),
        &weather_tools(),
        TurnLimits::default(),
    )
    .await;
    let outcome = outcome.expect("a turn");
    assert_eq!(outcome.stop, TurnStop::Answered(StopReason::EndTurn));
    assert_eq!((outcome.steps, outcome.text.as_str()), (2, "Hello, world!"));
    assert_eq!(
        outcome.usage,
        Usage {
            input_tokens: 94,
            output_tokens: 21
        }
    );
    assert_eq!(outcome.providers, vec!["oai", "oai"]);
    assert_eq!(
        *runner.ran.lock().expect("lock"),
        vec![("get_weather".into(), json!({"city": "Paris", "unit": "c"}))]
    );
    assert_eq!(history.len(), 4);
    assert!(events.contains(&TurnEvent::Text("Hello".into())));
    let second = &server.seen()[1].body;
    assert_eq!(second["tools"][0]["function"]["name"], json!("get_weather"));
    let messages = second["messages"].as_array().expect("messages");
    assert_eq!(
        messages[2]["tool_calls"][0]["id"],
        json!("call_DdmO9pD3xa9XTPNJ32zg2hcA")
    );
    assert_eq!(
        messages[2]["tool_calls"][0]["function"]["arguments"],
        json!(r#"{"city":"Paris","unit":"c"}"#)
    );
    assert_eq!(messages[3]["role"], json!("tool"));
    assert_eq!(
        messages[3]["tool_call_id"],
        json!("call_DdmO9pD3xa9XTPNJ32zg2hcA")
    );
    assert!(messages[3]["content"]
        .as_str()
        .expect("content")
        .contains("\"ok\":true"));

    let server = serve(vec![
        Reply::Sse(fixture("anthropic_two_tools.sse")),
        Reply::Sse(fixture("anthropic_text.sse")),
    ])
    .await;
    let (outcome, _, _, runner) = turn(
        &provider("ant", &config(Kind::Anthropic, &server)),
        &weather_tools(),
        TurnLimits::default(),
    )
    .await;
    assert_eq!(
        outcome.expect("a turn").stop,
        TurnStop::Answered(StopReason::EndTurn)
    );
    assert_eq!(runner.ran.lock().expect("lock").len(), 2);
    let second = &server.seen()[1].body;
    assert_eq!(second["tools"][1]["input_schema"]["type"], json!("object"));
    let messages = second["messages"].as_array().expect("messages");
    assert_eq!(
        messages.len(),
        3,
        "user, assistant, one user message with both results"
    );
    assert_eq!(messages[1]["content"][0]["type"], json!("tool_use"));
    assert_eq!(messages[1]["content"][0]["input"], json!({"city": "Paris"}));
    assert_eq!(messages[2]["role"], json!("user"));
    assert_eq!(messages[2]["content"][0]["tool_use_id"], json!("toolu_A1"));
    assert_eq!(messages[2]["content"][1]["tool_use_id"], json!("toolu_B2"));
    assert_eq!(messages[2]["content"][1]["is_error"], json!(false));
}

#[tokio::test]
async fn dotted_tool_names_go_on_the_wire_as_valid_names_and_come_back() {
    let answer = String::from_utf8(fixture("anthropic_tool_8_chunks.sse"))
        .expect("utf-8")
        .replace("\"get_weather\"", "\"shell_exec\"");
    let server = serve(vec![
        Reply::Sse(answer.into_bytes()),
        Reply::Sse(fixture("anthropic_text.sse")),
    ])
    .await;
    let tools: Vec<ToolSpec> = ["shell.exec", "files/read_text_file"]
        .into_iter()
        .map(|name| ToolSpec {
            name: name.into(),
            description: String::new(),
            parameters: json!({"type": "object"}),
        })
        .collect();
    let (outcome, _, _, runner) = turn(
        &provider("ant", &config(Kind::Anthropic, &server)),
        &tools,
        TurnLimits::default(),
    )
    .await;
    assert_eq!(
        outcome.expect("a turn").stop,
        TurnStop::Answered(StopReason::EndTurn)
    );
    assert_eq!(runner.ran.lock().expect("lock")[0].0, "shell.exec");
    let seen = server.seen();
    let offered: Vec<&Value> = seen[0].body["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| &t["name"])
        .collect();
    assert_eq!(
        offered,
        vec![&json!("shell_exec"), &json!("files_read_text_file")]
    );
    assert_eq!(
        seen[1].body["messages"][1]["content"][1]["name"],
        json!("shell_exec")
    );
}

#[tokio::test]
async fn an_unoffered_tool_or_bad_json_is_answered_as_a_tool_error_and_the_loop_goes_on() {
    let server = serve(vec![
        Reply::Sse(fixture("openai_unoffered_and_bad_json.sse")),
        Reply::Sse(fixture("openai_text.sse")),
    ])
    .await;
    let (outcome, history, _, runner) = turn(
        &provider("oai", &config(Kind::Openai, &server)),
        &weather_tools(),
        TurnLimits::default(),
    )
    .await;
    assert_eq!(
        outcome.expect("a turn").stop,
        TurnStop::Answered(StopReason::EndTurn)
    );
    assert!(
        runner.ran.lock().expect("lock").is_empty(),
        "neither call ran"
    );
    let results: Vec<_> = history
        .iter()
        .filter_map(|m| match m {
            Message::ToolResult {
                name,
                content,
                is_error,
                ..
            } => Some((name.as_str(), content.as_str(), *is_error)),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(
        results[0],
        (
            "shell.exec",
            refusal::not_offered("shell.exec").as_str(),
            true
        )
    );
    assert!(
        results[1]
            .1
            .starts_with("error: the arguments for \"get_weather\" are not valid JSON"),
        "{results:?}"
    );
    assert!(results[1].2);
    let second = &server.seen()[1].body;
    assert_eq!(
        second["messages"][3]["content"],
        json!(refusal::not_offered("shell.exec"))
    );
}

#[tokio::test]
async fn the_loop_stops_at_max_steps_and_at_its_wall_clock_budget() {
    let tool = || Reply::Sse(fixture("openai_tool_8_chunks.sse"));
    let server = serve(vec![tool(), tool(), tool(), tool()]).await;
    let limits = TurnLimits {
        max_steps: 2,
        budget: Duration::from_secs(30),
    };
    let (outcome, history, _, runner) = turn(
        &provider("oai", &config(Kind::Openai, &server)),
        &weather_tools(),
        limits,
    )
    .await;
    let outcome = outcome.expect("a turn");
    assert_eq!((outcome.stop, outcome.steps), (TurnStop::MaxSteps, 2));
    assert_eq!(server.seen().len(), 2);
    assert_eq!(
        runner.ran.lock().expect("lock").len(),
        1,
        "the last step's call is not run"
    );
    assert!(
        matches!(history.last(), Some(Message::ToolResult { content, is_error: true, .. }) if content == refusal::STEP_LIMIT)
    );

    // Positive control: one more step lets the model answer.
    let server = serve(vec![tool(), Reply::Sse(fixture("openai_text.sse"))]).await;
    let (outcome, _, _, _) = turn(
        &provider("oai", &config(Kind::Openai, &server)),
        &weather_tools(),
        limits,
    )
    .await;
    assert_eq!(
        outcome.expect("a turn").stop,
        TurnStop::Answered(StopReason::EndTurn)
    );

    // A provider slower than the budget: the turn ends at the budget, not the idle timeout.
    let server = serve(vec![Reply::Stall(
        fixture("openai_text.sse"),
        0,
        Duration::from_secs(10),
    )])
    .await;
    let limits = TurnLimits {
        max_steps: 2,
        budget: Duration::from_millis(400),
    };
    let started = Instant::now();
    let (outcome, history, _, _) = turn(
        &provider("oai", &config(Kind::Openai, &server)),
        &weather_tools(),
        limits,
    )
    .await;
    assert_eq!(outcome.expect("a turn").stop, TurnStop::Budget);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(history.len(), 1, "no half answer is kept");
}

/// The gateway's chat turn: the caller's tools are offered beside Loong's, a call to one
/// ends the turn with the call (id and arguments exact) and runs nothing; Loong's call in
/// the same answer is not run either, and the history keeps only the caller's call.
#[tokio::test]
async fn a_call_of_a_caller_tool_ends_the_turn_with_the_call_and_runs_nothing() {
    let tools = weather_tools();
    let (loong, caller) = tools.split_at(1);
    let server = serve(vec![Reply::Sse(fixture("anthropic_two_tools.sse"))]).await;
    let runner = Runner {
        ran: Mutex::new(vec![]),
    };
    let mut history = vec![Message::User {
        text: "weather and time in Paris?".into(),
    }];
    let outcome = loong_worker_agent::run_chat_turn(
        &provider("ant", &config(Kind::Anthropic, &server)),
        None,
        &mut history,
        loong,
        caller,
        &runner,
        TurnLimits::default(),
        &mut |_| {},
    )
    .await
    .expect("a turn");
    let TurnStop::CallerTools(calls) = &outcome.stop else {
        panic!(
            "the turn ended for the caller's tool, not {:?}",
            outcome.stop
        );
    };
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].id.as_str(), calls[0].name.as_str()),
        ("toolu_B2", "get_time")
    );
    assert!(runner.ran.lock().expect("lock").is_empty(), "nothing ran");
    assert_eq!(server.seen().len(), 1, "one round trip");
    let offered = &server.seen()[0].body["tools"];
    assert_eq!(offered[0]["name"], json!("get_weather"));
    assert_eq!(offered[1]["name"], json!("get_time"));
    assert_eq!(
        history.last(),
        Some(&Message::Assistant {
            text: String::new(),
            tool_calls: calls.clone()
        })
    );

    // Positive control: with no caller tools the same answer runs both of Loong's tools.
    let server = serve(vec![
        Reply::Sse(fixture("anthropic_two_tools.sse")),
        Reply::Sse(fixture("anthropic_text.sse")),
    ])
    .await;
    let (outcome, _, _, runner) = turn(
        &provider("ant", &config(Kind::Anthropic, &server)),
        &tools,
        TurnLimits::default(),
    )
    .await;
    assert_eq!(
        outcome.expect("a turn").stop,
        TurnStop::Answered(StopReason::EndTurn)
    );
    assert_eq!(runner.ran.lock().expect("lock").len(), 2);

    // OpenAI: a caller tool's arguments, sent in 8 pieces, come back joined exactly.
    let server = serve(vec![Reply::Sse(fixture("openai_tool_8_chunks.sse"))]).await;
    let mut history = vec![Message::User { text: "hi".into() }];
    let outcome = loong_worker_agent::run_chat_turn(
        &provider("oai", &config(Kind::Openai, &server)),
        None,
        &mut history,
        &[] as &[ToolSpec],
        &tools,
        &runner,
        TurnLimits::default(),
        &mut |_| {},
    )
    .await
    .expect("a turn");
    let TurnStop::CallerTools(calls) = outcome.stop else {
        panic!("the turn ended for the caller's tool");
    };
    assert_eq!(calls[0].arguments_json, r#"{"city":"Paris","unit":"c"}"#);
}

/// A tool call's argument pieces pass on as they arrive, in both families: one delta per
/// non-empty piece, with the call's id and name, joining to the whole call that follows.
#[tokio::test]
async fn a_tool_calls_argument_pieces_pass_on_as_they_arrive_in_both_families() {
    for (kind, fixture_name, id, pieces) in [
        (
            Kind::Openai,
            "openai_tool_8_chunks.sse",
            "call_DdmO9pD3xa9XTPNJ32zg2hcA",
            8,
        ),
        // 8 pieces, 2 of them empty: those add nothing and pass on as nothing.
        (
            Kind::Anthropic,
            "anthropic_tool_8_chunks.sse",
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            6,
        ),
    ] {
        let server = serve(vec![Reply::Sse(fixture(fixture_name))]).await;
        let (events, error) = collect(&provider("p", &config(kind, &server)), &ask("hi")).await;
        assert!(error.is_none(), "{error:?}");
        let deltas: Vec<(&str, &str, &str)> = events
            .iter()
            .filter_map(|e| match e {
                Event::ToolCallDelta {
                    id, name, delta, ..
                } => Some((id.as_str(), name.as_str(), delta.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(deltas.len(), pieces, "{fixture_name}: {deltas:?}");
        assert!(deltas
            .iter()
            .all(|d| d.1 == "get_weather" && !d.2.is_empty()));
        assert!(deltas.iter().all(|d| d.0 == id));
        let joined: String = deltas.iter().map(|d| d.2).collect();
        let whole = events
            .iter()
            .find_map(|e| match e {
                Event::ToolCall(c) => Some(c.clone()),
                _ => None,
            })
            .expect("the whole call");
        assert_eq!(joined, whole.arguments_json, "{fixture_name}");
        let last_delta = events
            .iter()
            .rposition(|e| matches!(e, Event::ToolCallDelta { .. }));
        let call_at = events.iter().position(|e| matches!(e, Event::ToolCall(_)));
        assert!(
            last_delta < call_at,
            "the pieces come before the whole call"
        );
    }
}
