"""Built-in plugins of savegress-gw (installed as savegress_gw_plugins)."""
