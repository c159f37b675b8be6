"""A bare Announcer with a fast address re-check, for the namespace test: `python -m tests.netns_announcer NAME PORT`.

The real server re-checks its addresses every 30 s; this runs the same class every 0.2 s so a test can watch
it follow an address change without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import tempfile
import uuid
from pathlib import Path

from speccyd.config.settings import load_settings
from speccyd.ops.discovery import Announcer


async def main(name: str, port: int) -> None:
    settings = load_settings(Path(tempfile.mkdtemp()), {"name": name}, env={})
    announcer = Announcer(settings, str(uuid.uuid4()), None, check_interval=0.2)
    announcer.start(port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await announcer.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
