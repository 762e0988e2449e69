"""The built-in plugins of savegress-gw, installed as the import package ``savegress_gw_plugins``.

One module per component, file name == the name that selects it in a profile. Each module is
declared as an entry point in group ``savegress_gw`` in the project's pyproject.toml, exactly as a
third-party plugin package would declare its own.
"""
