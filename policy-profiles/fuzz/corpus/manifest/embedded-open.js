// LOONG_PLUGIN_START
// {"plugin_id": "x",
