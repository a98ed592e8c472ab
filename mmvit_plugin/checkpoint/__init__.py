"""checkpoint of mmvit_plugin."""
