"""deploy/: the Compose setup's bot config is a valid config that selects the Milvus store."""

from pathlib import Path

from bot import config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_the_compose_config_loads_and_uses_the_milvus_service():
    s = config.load(DEPLOY / "config.toml")
    assert s.store_options == {"store": "milvus", "milvus_uri": "http://milvus:19530",
                               "milvus_token": None}
    compose = (DEPLOY / "compose.yaml").read_text()
    assert "milvus:\n" in compose and '"milvus", "run", "standalone"' in compose
    assert "./config.toml:/config/config.toml:ro" in compose
    assert 'entrypoint: ["python", "-m", "bot.launch"]' in compose  # the bot as shards
