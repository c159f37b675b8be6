"""Byte-level audio: mp3 and ADTS frames, ID3 tags, HLS packed-audio segments, gapless mp3 joins.

Pure and synchronous: no I/O, no asyncio, nothing from the rest of speccyd. Every parser works on a
growing byte stream: it returns only complete frames and never changes what it returned.
"""
