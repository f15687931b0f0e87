"""`python -m shardbot ARGS`: `python -m bot ARGS` pointed at a fake Discord on loopback.

For tests that run the bot as separate processes (through `python -m bot.launch
--bot-module shardbot`): $FAKEDISCORD_URL is the fake's base URL (http://127.0.0.1:PORT);
each process appends "<pid> <shard ids>" to $SHARD_LOG first.
"""

from __future__ import annotations

import os
import sys

import discord.asset
import discord.gateway
import discord.http
import yarl

from bot.__main__ import main

if __name__ == "__main__":
    base = os.environ["FAKEDISCORD_URL"]
    discord.http.Route.BASE = f"{base}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(
        base.replace("http://", "ws://") + "/gateway")
    discord.asset.Asset.BASE = base
    ids = sys.argv[sys.argv.index("--shard-ids") + 1] if "--shard-ids" in sys.argv else "-"
    with open(os.environ["SHARD_LOG"], "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {ids}\n")
    sys.exit(main(sys.argv[1:]))
