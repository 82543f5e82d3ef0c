"""The sans-IO heart of the relay: counting, limits, multipart inspection, hashing, events.

Nothing in this package imports asyncio, starlette, httpx or does file I/O (tests/core/test_imports.py
checks it). The glue in relay/ feeds it bytes and delivers what it returns.
"""
