//! Lists a page at a time: loongd answers a bounded page (`loong_ipc::Page`), and loongctl
//! asks for the next one after the last key it printed, so a list of any length (100,000
//! tokens) is shown without any frame near its limit, and `--limit`/`--after` show a part.

use std::{collections::HashSet, io::Write};

use loong_ipc::{
    message::control::MAX_PAGE_ITEMS, paths::Layout, ControlRequest, ControlResponse, Page,
};

use crate::{connect, Failure, REQUEST_DEADLINE};

/// `--limit` and `--after` of a list command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PageArgs {
    /// Show at most N items (default: all of them, fetched a page at a time).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Start after the item with this key (the last one an earlier `--limit` run showed).
    #[arg(long, value_name = "KEY")]
    pub after: Option<String>,
}

/// Asks for pages of one list until it ends or `args.limit` items were shown, calling `show`
/// for each item in order; returns how many were shown.
///
/// `ask` builds the request for a page, `take` opens the answer (`None`: the wrong answer),
/// `key` is an item's key (what the next page starts after).
pub(crate) fn each<T>(
    layout: &Layout,
    args: &PageArgs,
    ask: impl Fn(Page) -> ControlRequest,
    take: impl Fn(ControlResponse) -> Option<Vec<T>>,
    key: impl Fn(&T) -> String,
    mut show: impl FnMut(&T) -> Result<(), Failure>,
) -> Result<usize, Failure> {
    let mut client = connect(layout)?;
    let mut after = args.after.clone();
    let mut shown = 0usize;
    // Every cursor asked after: a page that ends on one of them again would be asked for
    // forever (a daemon that answers the same page, or a cycle of pages).
    let mut cursors: HashSet<String> = after.iter().cloned().collect();
    loop {
        let want = match args.limit {
            Some(n) => {
                let left = (n as usize).saturating_sub(shown);
                if left == 0 {
                    return Ok(shown);
                }
                left.min(MAX_PAGE_ITEMS as usize)
            }
            None => MAX_PAGE_ITEMS as usize,
        };
        let page = Page {
            after: after.clone(),
            limit: u32::try_from(want).unwrap_or(MAX_PAGE_ITEMS),
        };
        let answer: ControlResponse = client.call(ask(page), REQUEST_DEADLINE)?;
        let items = take(answer).ok_or_else(|| anyhow::anyhow!("unexpected answer to a list"))?;
        let Some(last) = items.last() else {
            return Ok(shown);
        };
        let next = key(last);
        if !cursors.insert(next.clone()) {
            return Err(anyhow::anyhow!(
                "loongd answered a page ending at {next} again; the list does not move on, so loongctl stops ({shown} items shown)"
            )
            .into());
        }
        after = Some(next);
        for item in &items {
            show(item)?;
        }
        shown += items.len();
    }
}

/// A JSON array printed an element at a time, so a long list never sits whole in memory.
#[derive(Debug)]
pub(crate) struct JsonArray {
    first: bool,
}

impl JsonArray {
    pub(crate) fn start() -> JsonArray {
        print!("[");
        JsonArray { first: true }
    }

    pub(crate) fn item(&mut self, v: &serde_json::Value) {
        if !self.first {
            print!(",");
        }
        self.first = false;
        print!("{}", crate::text::json_value(v));
    }

    pub(crate) fn end(self) {
        println!("]");
        let _ = std::io::stdout().flush();
    }
}

/// A whole list command: every page `args` asks for, printed as one JSON array (`to_json` of
/// each item) or one human line each (`print`); exit 0.
#[allow(clippy::too_many_arguments)]
pub(crate) fn print_list<T>(
    layout: &Layout,
    args: &PageArgs,
    json: bool,
    ask: impl Fn(Page) -> ControlRequest,
    take: impl Fn(ControlResponse) -> Option<Vec<T>>,
    key: impl Fn(&T) -> String,
    to_json: impl Fn(&T) -> serde_json::Value,
    print: impl Fn(&T),
) -> Result<u8, Failure> {
    if json {
        let mut array = JsonArray::start();
        each(layout, args, ask, take, key, |t| {
            array.item(&to_json(t));
            Ok(())
        })?;
        array.end();
    } else {
        each(layout, args, ask, take, key, |t| {
            print(t);
            Ok(())
        })?;
    }
    Ok(crate::exit::OK)
}

/// The first item of a list for which `wanted` holds, looked for a page at a time.
pub(crate) fn find<T: Clone>(
    layout: &Layout,
    ask: impl Fn(Page) -> ControlRequest,
    take: impl Fn(ControlResponse) -> Option<Vec<T>>,
    key: impl Fn(&T) -> String,
    wanted: impl Fn(&T) -> bool,
) -> Result<Option<T>, Failure> {
    let mut found = None;
    each(layout, &PageArgs::default(), ask, take, key, |t| {
        if found.is_none() && wanted(t) {
            found = Some(t.clone());
        }
        Ok(())
    })?;
    Ok(found)
}
