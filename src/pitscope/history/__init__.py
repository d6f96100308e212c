"""The inspection history: every scored photo, threshold change and wear alert, in a database.

`store.HistoryStore` opens SQLite (a file, the default) or PostgreSQL (a URL) and brings its
schema to the newest Alembic migration; `names` reads part ids and capture times from file
names and EXIF; `alerts` evaluates the wear rule on each new inspection of a part and sends
webhooks. The service (`pitscope serve --db`), `pitscope predict --db`, `pitscope calibrate
--write --db`, `pitscope history` and `pitscope wear --db` write and read it.
"""


class HistoryError(RuntimeError):
    """The database cannot be opened as an inspection history (the message says why and what to do)."""


class HistoryUnavailable(RuntimeError):
    """A write did not reach the database; nothing of it was recorded."""
