"""The encoder as a service: one process holds the model and serves every bot process.

`python -m index serve --model SPEC` runs `server.py` (aiohttp) around the in-process
encoder worker (`index.encoder`), so requests from all clients share its micro-batches and
its priority queue. `client.RemoteEncoder` is what a bot or CLI process uses instead of
loading the model (`encoder_url` in config.toml, `--encoder-url` on the CLI). The wire
format is in `protocol.py`.
"""
