"""The local transport: the bot's commands from standard input, answers as text.

    !find red circle*1 blue square*2        a search (the configured prefix, or /find)
    !find --image cat.jpg #1*0.5 cars       --image PATH attaches a file to this command
    attach PATH                             attaches a file to the next command (#1, #2, ...)
    next | prev | stop  (or ▶️ ◀️ ⏹️)        turn the pages of the last result
    !why N                                  where in result #N the model saw the query
    !help                                   the grammar
    quit                                    (or end of input)

Every reply is printed; the pictures the bot would post (thumbnails, the word-weights
picture) are saved into the output folder and their paths printed. The command logic is
`core.Core`, the same as on Discord; there is one user, so no cooldown.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import re
import sys
from pathlib import Path
from typing import TextIO

from index import Engine, collection_exists
from index.errors import ClipfindError

from . import render
from .config import Settings
from .core import Attachment, Core, FindRequest, PagingState, error
from .reply import Reply
from .runtime import DEMO_ROOT, Runtime
from .why import parse_rank, why

log = logging.getLogger(__name__)

_IMAGE_OPT = re.compile(r'(?:^|\s)--image\s+(?:"([^"]*)"|(\S+))')
NEXT_WORDS = {"next", "▶️", "▶", ">"}
PREV_WORDS = {"prev", "previous", "◀️", "◀", "<"}
STOP_WORDS = {"stop", "⏹️", "⏹"}
QUIT_WORDS = {"quit", "exit"}


def file_attachment(path: Path) -> Attachment:
    """A local file as an attachment (OSError when it cannot be read)."""
    size = path.stat().st_size
    if not path.is_file():
        raise IsADirectoryError(f"{path} is not a file")
    ctype = mimetypes.guess_type(path.name)[0]

    async def read() -> bytes:
        return await asyncio.to_thread(path.read_bytes)

    return Attachment(path.name, size, ctype, read)


def split_image_options(text: str) -> tuple[str, list[str]]:
    """'--image a.png red' -> ('red', ['a.png'])."""
    paths = [m.group(1) if m.group(1) is not None else m.group(2) for m in _IMAGE_OPT.finditer(text)]
    return " ".join(_IMAGE_OPT.sub(" ", text).split()), paths


def _plain(text: str) -> str:
    return text.replace("**", "").replace("`", "")


class Console:
    """Reads commands, prints replies, saves pictures; `run` returns an exit status."""

    def __init__(self, settings: Settings, engine: Engine, out_dir: Path, *,
                 stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout):
        self.settings = settings
        self.core = Core(settings, engine, cooldown=False)
        self.out_dir = out_dir
        self.stdin, self.stdout = stdin, stdout
        self.pending: list[Attachment] = []
        self.state: PagingState | None = None
        self.replies = 0

    def say(self, text: str = "") -> None:
        print(text, file=self.stdout, flush=True)

    async def run(self) -> int:
        self.say("clipfind console: type !help for the grammar, next/prev to page, quit to end")
        try:
            while True:
                line = await asyncio.to_thread(self.stdin.readline)
                if not line:
                    break
                try:
                    if not await self.handle(line.strip()):
                        break
                except Exception:  # a bug must not end the session: say so, keep reading
                    log.exception("command failed: %s", line.strip()[:80])
                    self.show(error("something went wrong on my side (see the log); "
                                    "try another command"))
        finally:
            await self.core.close()
        return 0

    async def handle(self, line: str) -> bool:
        """One input line; False to stop."""
        if not line:
            return True
        word = line.lower()
        if word in QUIT_WORDS:
            return False
        if word.startswith("attach "):
            self._attach(line[7:].strip().strip('"'))
        elif word in NEXT_WORDS or word in PREV_WORDS:
            await self._turn(1 if word in NEXT_WORDS else -1)
        elif word in STOP_WORDS:
            self.state = None
            self.say("paging stopped")
        else:
            command, rest = self._command(line)
            if command == "find":
                await self._find(rest)
            elif command == "help":
                self.show(self.core.help(self.settings.prefix))
            elif command == "why":
                await self._why(rest)
            else:
                self.show(error(f"unknown command {line[:40]!r}; try {self.settings.prefix}help"))
        return True

    def _command(self, line: str) -> tuple[str | None, str]:
        for p in (self.settings.prefix, "/"):
            if line.startswith(p):
                head, _, rest = line[len(p):].partition(" ")
                return head.lower(), rest.strip()
        return None, ""

    def _attach(self, path_text: str) -> None:
        try:
            self.pending.append(file_attachment(Path(path_text).expanduser()))
        except OSError as e:
            self.show(error(f"{path_text}: cannot attach ({e.strerror or e})"))
            return
        self.say(f"attached #{len(self.pending)}: {path_text}")

    async def _find(self, text: str) -> None:
        text, paths = split_image_options(text)
        attachments, self.pending = self.pending, []
        for p in paths:
            try:
                attachments.append(file_attachment(Path(p).expanduser()))
            except OSError as e:
                self.show(error(f"{p}: cannot attach ({e.strerror or e})"))
                return
        reply = await self.core.find(FindRequest(text, 0, attachments))
        if reply.is_page:
            self.state = reply.state
        await self.show_async(reply)

    async def _turn(self, delta: int) -> None:
        if self.state is None:
            self.show(error(f"no result to page; search first with {self.settings.prefix}find"))
            return
        reply = await self.core.turn(self.state, delta)
        if reply.is_page:
            self.state = reply.state
        await self.show_async(reply)

    async def _why(self, text: str) -> None:
        try:
            rank = parse_rank(text, self.settings.prefix)
        except ClipfindError as e:
            self.show(error(str(e)))
            return
        self.show(await why(self.core, self.state, rank, 0))

    async def show_async(self, reply: Reply) -> None:
        """`show`, with the pictures written by a worker thread (not on the event loop)."""
        if reply.error or not reply.files:
            self.show(reply)
            return
        self.replies += 1
        saved = await asyncio.to_thread(self._save, reply.files, self.replies)
        self.show(reply, saved)

    def _save(self, files, n: int) -> dict[str, Path]:
        saved: dict[str, Path] = {}
        for f in files:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            path = self.out_dir / f"{n:03d}-{f.name}"
            path.write_bytes(f.data)
            saved[f.name] = path
        return saved

    def show(self, reply: Reply, saved: dict[str, Path] | None = None) -> None:
        if reply.error:
            self.say(f"error: {reply.text}")
            return
        if saved is None:
            self.replies += 1
            saved = self._save(reply.files, self.replies)
        self.say(_plain(reply.text))
        for c in reply.cards:
            line = f"{c.rank:>4}. {c.score:.3f}  {c.title}"
            extra = [x for x in (c.credit, c.source) if x]
            if extra:
                line += f"  [{' · '.join(extra)}]"
            self.say(line)
            if c.file is not None:
                self.say(f"        image: {saved[c.file.name]}")
            elif c.image_url:
                self.say(f"        image: {c.image_url}")
            if c.link:
                self.say(f"        link: {c.link}")
            if c.copies:
                self.say("        " + render.copies_text(c, markdown=False))
        if reply.attention_text:
            self.say(reply.attention_text)
        if reply.attention_png is not None:
            self.say(f"word weights picture: {saved[reply.attention_png.name]}")
        if reply.picture is not None:
            self.say(f"picture: {saved[reply.picture.name]}")


async def run_console(settings: Settings, *, out_dir: Path, demo: bool,
                      demo_root: Path = DEMO_ROOT, stdin: TextIO = sys.stdin,
                      stdout: TextIO = sys.stdout, runtime: Runtime | None = None) -> int:
    if runtime is None and not demo:
        try:  # the collection's folder, or its Milvus (unreachable: one line naming it)
            found = await asyncio.to_thread(collection_exists, settings.collection,
                                            **settings.store_options)
        except ClipfindError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if not found:
            print(f"no collection at {settings.collection}: build one with "
                  f"`python -m index build --index {settings.collection} FOLDER`, "
                  "or run the console with --demo", file=sys.stderr)
            return 2
    try:
        if runtime is None:
            runtime = (await Runtime.demo(settings, demo_root, out=stdout) if demo
                       else Runtime(settings))
    except ClipfindError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if not await runtime.wait():
            print(f"error: {runtime.load_error}", file=sys.stderr)
            return 2
        settings, engine = runtime.settings, runtime.engine
        print(f"collection {settings.collection}: {len(engine.collection)} images, "
              f"model {engine.model_name}", file=stdout, flush=True)
        return await Console(settings, engine, out_dir, stdin=stdin, stdout=stdout).run()
    finally:
        await runtime.close()
