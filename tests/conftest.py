"""Top-level test configuration: shared fixtures come from plugins; subfolders add their own conftest."""

pytest_plugins = ["oshu_localkube.pytest_plugin", "oshu_testkit.plugin"]
