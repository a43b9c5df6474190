# LOONG_PLUGIN_START
# {
#   "plugin_id": "stdio-echo-py",
#   "provider_id": "stdio-echo",
#   "connector_name": "stdio-echo",
#   "channel_id": "primary",
#   "endpoint": "local://stdio-echo",
#   "capabilities": ["InvokeConnector"],
#   "trust_tier": "unverified",
#   "metadata": {
#     "bridge_kind": "process_stdio",
#     "command": "cat",
#     "version": "0.1.0",
#     "source": "example"
#   }
# }
# LOONG_PLUGIN_END
