"""The annotation store: one module behind SQLAlchemy 2 (SQLite or PostgreSQL).

``Store(url)`` opens ``sqlite:///path.db`` (the default, embedded) or ``postgresql://...``;
``Store.upgrade()`` applies the Alembic migrations in ``feedback/migrations`` up to head (the
app and every admin command call it on start). The schema is ``metadata`` below; a test checks
that the migrations produce exactly it.

Writes are safe under concurrency:
- SQLite runs in WAL mode with a busy timeout, and every transaction begins ``IMMEDIATE`` (it
  takes the write lock up front), so concurrent submits queue instead of failing or
  interleaving;
- PostgreSQL locks the task row (``SELECT ... FOR UPDATE``) while a label is checked and
  written, so the "at most R labels per item" rule holds;
- ``labels`` has a unique (task, user) constraint and ``submit`` is idempotent: the same label
  sent twice is stored once.
Every write records who (user id) and when (UTC).

Secrets: tokens are random (``secrets.token_urlsafe``) and stored as SHA-256 hashes; passwords
as salted scrypt hashes (an unknown name costs the same scrypt as a known one, so sign-in time
does not tell which names exist). A user has one personal token (for the API and scripts) and
any number of sign-in sessions (one per browser sign-in, each revocable, each expiring). The
bootstrap admin token comes from the environment (``ALIGNKIT_ADMIN_TOKEN``), never from code.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import random
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from alignkit.errors import UserError
from alignkit.feedback.quality import calibration_state, gold_score, quality_control

log = logging.getLogger("alignkit.annotate")

TS = sa.DateTime(timezone=True)
metadata = sa.MetaData()

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=True, unique=True),
    sa.Column("password_hash", sa.String(300), nullable=True),
    sa.Column("created_at", TS, nullable=False),
)
# one row per sign-in: the cookie holds the token, the table its hash; signing out deletes the row
sessions = sa.Table(
    "sessions", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
)
# an item handed to an annotator by next_task, held for them until it expires (or they label it),
# so that concurrent annotators are handed different items
leases = sa.Table(
    "leases", metadata,
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("expires_at", TS, nullable=False),
)
# append-only: who did what, when (nothing in the app updates or deletes a row of it); an undone
# label's whole record is kept in its "undo" entry
audit = sa.Table(
    "audit", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", TS, nullable=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL"),
              nullable=True),
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"),
              nullable=True, index=True),
    sa.Column("task_id", sa.Integer, nullable=True),
    sa.Column("detail", sa.JSON, nullable=True),
)
projects = sa.Table(
    "projects", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("guidelines", sa.Text, nullable=False),
    sa.Column("aspects", sa.JSON, nullable=False),
    sa.Column("labels_per_item", sa.Integer, nullable=False),
    sa.Column("reward_model", sa.String(1000), nullable=True),
    sa.Column("al_strategy", sa.String(20), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("created_by", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
    # quality control (``Store.quality_state``): each annotator's first N gold items are their
    # calibration; their labels count once they reach the accuracy; after it, gold items are
    # mixed into their queue at the attention rate
    sa.Column("calibration_items", sa.Integer, nullable=False, server_default="0"),
    sa.Column("calibration_accuracy", sa.Float, nullable=False, server_default="0.8"),
    sa.Column("attention_rate", sa.Float, nullable=False, server_default="0"),
    # AI assist (``ASSIST``): whether annotators see the judge's suggestion, and when
    sa.Column("assist", sa.String(10), nullable=False, server_default="off"),
)
members = sa.Table(
    "members", metadata,
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("added_at", TS, nullable=False),
)
tasks = sa.Table(
    "tasks", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),  # "pairwise" or "ranking"
    sa.Column("prompt", sa.JSON, nullable=False),  # text or chat messages
    sa.Column("responses", sa.JSON, nullable=False),  # 2 (pairwise) or K texts
    sa.Column("is_gold", sa.Boolean, nullable=False),
    sa.Column("gold", sa.JSON, nullable=True),  # the known answer of a hidden gold item
    sa.Column("meta", sa.JSON, nullable=True),  # category, source file:line, ...
    sa.Column("al_score", sa.Float, nullable=True),  # active learning: higher is served first
    # why the queue could not show it (stored by an older alignkit or by hand): kept out of the
    # queue and listed on the admin dashboard instead of failing every page that reaches it
    sa.Column("unrenderable", sa.Text, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("created_by", sa.Integer, sa.ForeignKey("users.id"), nullable=True),
)
labels = sa.Table(
    "labels", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
    # pairwise: {"choices": {aspect: "A" | "B" | "tie"}}; ranking: {"ranking": [best .. worst]}
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    # ranking: the canonical indices in the order this annotator was shown them (``shown_order``)
    sa.Column("shown_order", sa.JSON, nullable=True),
    sa.UniqueConstraint("task_id", "user_id", name="uq_label_task_user"),
    # whether the judge's suggestion was shown before this label was given (``assist_shown``)
    sa.Column("assisted", sa.Boolean, nullable=True),
    sqlite_autoincrement=True,  # an undone label's id is never reused (the history names it)
)
# a judge's suggested answer of a task (``alignkit annotate create-project --judge``), label-shaped
# ({"choices": ...} or {"ranking": ...}) so it compares with labels as a gold answer does
suggestions = sa.Table(
    "suggestions", metadata,
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("judge", sa.String(1000), nullable=False),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("confidence", sa.Float, nullable=True),
    sa.Column("created_at", TS, nullable=False),
)
# append-only: a label as it was before an annotator edited it ("edit") or took it back ("undo"),
# with who did so and when; ``label_id`` stays after the label itself is gone (None only for a
# label undone before its project was restored from a backup: its id named a row of another
# database; its history stays under its task)
label_history = sa.Table(
    "label_history", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("label_id", sa.Integer, nullable=True, index=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("shown_order", sa.JSON, nullable=True),
    sa.Column("labelled_at", TS, nullable=False),
    sa.Column("by_user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="SET NULL"),
              nullable=True),
    sa.Column("at", TS, nullable=False),
)
resolutions = sa.Table(
    "resolutions", metadata,
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("created_at", TS, nullable=False),
)

ROLES = ("admin", "annotator")
KINDS = ("pairwise", "ranking")
CHOICES = ("A", "B", "tie")
AL_STRATEGIES = ("std", "margin")
MAX_TEXT = 100_000  # characters of one prompt, response or reason


class StoreError(UserError):
    """A request the store refuses; ``status`` is the HTTP status the app answers with."""

    status = 400


class NotFound(StoreError):
    status = 404


class Forbidden(StoreError):
    status = 403


class Conflict(StoreError):
    status = 409


class Invalid(StoreError):
    status = 422


def now() -> datetime:
    return datetime.now(timezone.utc)


def shown_order(task_id: int, user_id: int, k: int) -> list[int]:
    """The order in which annotator ``user_id`` is shown a ranking task's ``k`` responses
    (canonical indices, the first shown first): a permutation seeded by (task, annotator), so
    that no response gains from always being shown first, and a reload shows the same order."""
    seed = hashlib.sha256(f"alignkit-rank:{task_id}:{user_id}".encode("ascii")).digest()
    order = list(range(k))
    random.Random(int.from_bytes(seed[:8], "big")).shuffle(order)
    return order


ASSIST = ("off", "after", "before")
ASSIST_SHARE = 0.5


def assist_shown(project: dict, task_id: int, user_id: int) -> bool:
    """Whether annotator ``user_id`` sees task ``task_id``'s suggestion before answering: only
    under ``assist == "before"``, and then for a seeded half of the (task, annotator) pairs; the
    other half is the control that measures anchoring (agreement with the judge with the
    suggestion shown minus without). Deterministic, so a reload shows the same."""
    if project.get("assist") != "before":
        return False
    seed = hashlib.sha256(f"alignkit-assist:{task_id}:{user_id}".encode("ascii")).digest()
    return int.from_bytes(seed[:8], "big") / 2.0 ** 64 < ASSIST_SHARE


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2 ** 14, r=8, p=1, dklen=32)
    return f"scrypt$16384$8$1${salt.hex()}${digest.hex()}"


@functools.lru_cache(maxsize=1)
def _no_password() -> str:
    """What an unknown user's password is checked against: the same work as a real check."""
    return hash_password(secrets.token_urlsafe(16))


def check_password(password: str, stored: str | None) -> bool:
    if not stored:
        check_password(password, _no_password())  # the time of a real check, then no
        return False
    try:
        _, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n),
                             r=int(r), p=int(p), dklen=len(digest) // 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


def normalise_url(url: str) -> str:
    """``postgresql://`` -> the psycopg 3 driver (the one the ``web`` extra installs); a bare
    path -> ``sqlite:///path``."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if "://" not in url:
        return f"sqlite:///{url}"
    return url


def shown_url(url: str) -> str:
    """The URL with any password masked (for messages and logs)."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparsable URL>"


def make_engine(url: str) -> sa.Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 60},
                                  pool_size=10, max_overflow=30)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # a writing transaction takes the write lock up front (BEGIN IMMEDIATE): no deadlock
            # between two readers that both want to upgrade to writers; reads (``Store.rx``)
            # begin DEFERRED and run beside the writer (WAL)
            read_only = conn.get_execution_options().get("alignkit_read_only", False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    try:
        return sa.create_engine(url, pool_size=10, max_overflow=30, pool_pre_ping=True)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as e:
        raise UserError(f"--db {shown_url(url)}: not a database this app supports (use "
                        f"sqlite:///path.db or postgresql://...; {e})") from None


@dataclass
class User:
    id: int
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _row(r) -> dict:
    return dict(r._mapping) if r is not None else None


class Store:
    """All reads and writes of the annotation app and the admin commands."""

    def __init__(self, url: str, lease_seconds: float = 600.0):
        self.url = normalise_url(url)
        self.lease_seconds = lease_seconds
        self.engine = make_engine(url)
        self.reader = self.engine.execution_options(alignkit_read_only=True)

    # ------------------------------------------------------------------ schema

    def upgrade(self) -> None:
        """Apply the migrations up to head (idempotent)."""
        import logging

        logging.getLogger("alembic").setLevel(logging.WARNING)  # no per-plugin chatter
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
        try:
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except sa.exc.OperationalError as e:
            raise UserError(f"--db {shown_url(self.url)}: cannot open the database "
                            f"({str(e.orig).strip()})") from None

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[sa.Connection]:
        """A writing transaction."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def rx(self) -> Iterator[sa.Connection]:
        """A read-only transaction (on SQLite it does not take the write lock)."""
        with self.reader.begin() as conn:
            yield conn

    # ------------------------------------------------------------------ people

    def create_user(self, name: str, role: str = "annotator",
                    password: str | None = None) -> tuple[User, str]:
        """A new user and their sign-in token (shown once; only its hash is stored)."""
        name = (name or "").strip()
        if not name or len(name) > 200:
            raise Invalid("user name must be 1-200 characters")
        if role not in ROLES:
            raise Invalid(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        token = secrets.token_urlsafe(24)
        with self.tx() as c:
            if c.execute(sa.select(users.c.id).where(users.c.name == name)).first():
                raise Conflict(f"user {name!r} already exists")
            uid = c.execute(users.insert().values(
                name=name, role=role, token_hash=hash_token(token),
                password_hash=hash_password(password) if password else None,
                created_at=now())).inserted_primary_key[0]
            self._audit(c, "create_user", None, None, name=name, role=role)
        return User(uid, name, role), token

    def new_token(self, name: str) -> str:
        """Replace a user's token (the old one stops working)."""
        token = secrets.token_urlsafe(24)
        with self.tx() as c:
            done = c.execute(users.update().where(users.c.name == name).values(
                token_hash=hash_token(token))).rowcount
        if not done:
            raise NotFound(f"no user named {name!r}")
        return token

    def ensure_admin(self, token: str, name: str = "admin") -> User:
        """The bootstrap admin: created (or its token replaced) from an environment secret."""
        if len(token) < 16:
            raise UserError("the admin token must be at least 16 characters")
        with self.tx() as c:
            row = c.execute(sa.select(users).where(users.c.name == name)).first()
            if row is None:
                uid = c.execute(users.insert().values(
                    name=name, role="admin", token_hash=hash_token(token),
                    created_at=now())).inserted_primary_key[0]
            else:
                uid = row.id
                c.execute(users.update().where(users.c.id == uid).values(
                    role="admin", token_hash=hash_token(token)))
        return User(uid, name, "admin")

    def user_by_token(self, token: str | None) -> Optional[User]:
        if not token or len(token) > 500:
            return None
        with self.rx() as c:
            r = c.execute(sa.select(users).where(users.c.token_hash == hash_token(token))).first()
        return User(r.id, r.name, r.role) if r else None

    def user_by_password(self, name: str, password: str) -> Optional[User]:
        _no_password()  # made on the first sign-in of any name: never a tell of one
        with self.rx() as c:
            r = c.execute(sa.select(users).where(users.c.name == name)).first()
        if check_password(password, r.password_hash if r else None):
            return User(r.id, r.name, r.role)
        return None

    def open_session(self, user: User, days: float = 14.0) -> str:
        """A new sign-in session of ``user`` (its token, for the cookie), valid ``days``."""
        from datetime import timedelta

        token = secrets.token_urlsafe(32)
        with self.tx() as c:
            c.execute(sessions.insert().values(
                token_hash=hash_token(token), user_id=user.id, created_at=now(),
                expires_at=now() + timedelta(days=days)))
        return token

    def user_by_session(self, token: str | None) -> Optional[User]:
        """The user of a live session (``None``: unknown, signed out or expired)."""
        if not token or len(token) > 500:
            return None
        with self.rx() as c:
            r = c.execute(sa.select(users, sessions.c.expires_at).join(
                sessions, sessions.c.user_id == users.c.id).where(
                sessions.c.token_hash == hash_token(token))).first()
        if r is None:
            return None
        expires = r.expires_at if r.expires_at.tzinfo else r.expires_at.replace(
            tzinfo=timezone.utc)  # SQLite hands back naive UTC times
        return User(r.id, r.name, r.role) if expires > now() else None

    def close_session(self, token: str | None) -> None:
        """Sign a session out (and sweep expired ones); an unknown token is no error."""
        with self.tx() as c:
            if token:
                c.execute(sessions.delete().where(sessions.c.token_hash == hash_token(token)))
            c.execute(sessions.delete().where(sessions.c.expires_at < now()))

    def user_by_name(self, name: str) -> User:
        with self.rx() as c:
            r = c.execute(sa.select(users).where(users.c.name == name)).first()
        if r is None:
            raise NotFound(f"no user named {name!r}")
        return User(r.id, r.name, r.role)

    # ------------------------------------------------------------------ projects

    @staticmethod
    def _audit(c, action: str, user_id: int | None = None, project_id: int | None = None,
               task_id: int | None = None, **detail) -> None:
        """One entry of the audit log, written in the caller's transaction (it stands or falls
        with what it records)."""
        c.execute(audit.insert().values(at=now(), user_id=user_id, action=action,
                                        project_id=project_id, task_id=task_id,
                                        detail=json.loads(json.dumps(detail, default=str))
                                        if detail else None))

    def record(self, action: str, user: User | None = None, project_id: int | None = None,
               **detail) -> None:
        """An audit entry of something the store itself does not do (an export, a sign-in)."""
        with self.tx() as c:
            self._audit(c, action, user.id if user else None, project_id, **detail)

    def audit_of(self, project_id: int | None = None) -> list[dict]:
        """The audit log (of one project, or all of it), oldest first, with user names."""
        q = (sa.select(audit, users.c.name.label("user"))
             .join(users, users.c.id == audit.c.user_id, isouter=True).order_by(audit.c.id))
        if project_id is not None:
            q = q.where(audit.c.project_id == project_id)
        with self.rx() as c:
            return [_row(r) for r in c.execute(q)]

    def create_project(self, name: str, guidelines: str = "", aspects: list[str] | None = None,
                       labels_per_item: int = 2, reward_model: str | None = None,
                       al_strategy: str = "std", created_by: int | None = None,
                       calibration_items: int = 0, calibration_accuracy: float = 0.8,
                       attention_rate: float = 0.0, assist: str = "off") -> int:
        """A new project. ``calibration_items``: N gold items each annotator answers first;
        their labels count once their accuracy on them reaches ``calibration_accuracy``.
        ``attention_rate``: the share of a calibrated annotator's queue that is hidden gold
        items (attention checks)."""
        aspects = [a.strip() for a in (aspects or ["overall"]) if a.strip()]
        name = (name or "").strip()
        if not name or len(name) > 200:
            raise Invalid("project name must be 1-200 characters")
        if not aspects or len(set(aspects)) != len(aspects):
            raise Invalid("aspects must be distinct, non-empty names")
        if labels_per_item < 1:
            raise Invalid(f"labels per item must be >= 1, got {labels_per_item}")
        if al_strategy not in AL_STRATEGIES:
            raise Invalid(f"active-learning strategy must be one of {AL_STRATEGIES}")
        check_quality_settings(calibration_items, calibration_accuracy, attention_rate)
        check_assist(assist)
        with self.tx() as c:
            if c.execute(sa.select(projects.c.id).where(projects.c.name == name)).first():
                raise Conflict(f"project {name!r} already exists")
            pid = c.execute(projects.insert().values(
                name=name, guidelines=guidelines or "", aspects=aspects,
                labels_per_item=labels_per_item, reward_model=reward_model,
                al_strategy=al_strategy, created_at=now(), created_by=created_by,
                calibration_items=calibration_items, calibration_accuracy=calibration_accuracy,
                attention_rate=attention_rate, assist=assist)).inserted_primary_key[0]
            self._audit(c, "create_project", created_by, pid, name=name, aspects=aspects,
                        labels_per_item=labels_per_item, calibration_items=calibration_items,
                        calibration_accuracy=calibration_accuracy,
                        attention_rate=attention_rate)
            return pid

    def update_project(self, project_id: int, **values) -> None:
        allowed = {"guidelines", "labels_per_item", "reward_model", "al_strategy",
                   "calibration_accuracy", "attention_rate", "assist"}
        bad = set(values) - allowed
        if bad:
            raise Invalid(f"cannot change {', '.join(sorted(bad))}")
        check_quality_settings(0, values.get("calibration_accuracy", 0.8),
                               values.get("attention_rate", 0.0))
        check_assist(values.get("assist", "off"))
        with self.tx() as c:
            c.execute(projects.update().where(projects.c.id == project_id).values(**values))

    def project(self, project_id: int) -> dict:
        with self.rx() as c:
            r = _row(c.execute(sa.select(projects).where(projects.c.id == project_id)).first())
        if r is None:
            raise NotFound(f"no project {project_id}")
        return r

    def project_by_name(self, name: str) -> dict:
        with self.rx() as c:
            r = _row(c.execute(sa.select(projects).where(projects.c.name == name)).first())
        if r is None:
            raise NotFound(f"no project named {name!r} (create it with alignkit annotate "
                           "create-project)")
        return r

    def projects_for(self, user: User) -> list[dict]:
        q = sa.select(projects).order_by(projects.c.id)
        if not user.is_admin:
            q = q.join(members, members.c.project_id == projects.c.id).where(
                members.c.user_id == user.id)
        with self.rx() as c:
            return [_row(r) for r in c.execute(q)]

    def add_member(self, project_id: int, user_id: int) -> None:
        with self.tx() as c:
            exists = c.execute(sa.select(members).where(
                members.c.project_id == project_id, members.c.user_id == user_id)).first()
            if not exists:
                c.execute(members.insert().values(project_id=project_id, user_id=user_id,
                                                  added_at=now()))
                self._audit(c, "add_member", None, project_id, member=user_id)

    def check_access(self, project_id: int, user: User) -> dict:
        """The project, if ``user`` may work on it. Annotators outside it get 404 (not 403), so
        that project ids cannot be probed."""
        project = self.project(project_id)
        if user.is_admin:
            return project
        with self.rx() as c:
            ok = c.execute(sa.select(members).where(members.c.project_id == project_id,
                                                    members.c.user_id == user.id)).first()
        if not ok:
            raise NotFound(f"no project {project_id}")
        return project

    def member_names(self, project_id: int) -> list[str]:
        with self.rx() as c:
            return [r.name for r in c.execute(
                sa.select(users.c.name).join(members, members.c.user_id == users.c.id)
                .where(members.c.project_id == project_id).order_by(users.c.name))]

    # ------------------------------------------------------------------ tasks

    def add_tasks(self, project_id: int, items: list[dict], created_by: int | None = None
                  ) -> list[int]:
        """Insert tasks ``{kind, prompt, responses, gold?, meta?}`` (validated by
        ``validate_task``) in one transaction; returns their ids."""
        project = self.project(project_id)
        rows = [validate_task(item, project["aspects"]) for item in items]
        stamp = now()
        ids = []
        with self.tx() as c:
            for row in rows:
                ids.append(c.execute(tasks.insert().values(
                    project_id=project_id, created_at=stamp, created_by=created_by,
                    **row)).inserted_primary_key[0])
            self._audit(c, "add_tasks", created_by, project_id, count=len(ids),
                        first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None)
        return ids

    def task(self, task_id: int) -> dict:
        with self.rx() as c:
            r = _row(c.execute(sa.select(tasks).where(tasks.c.id == task_id)).first())
        if r is None:
            raise NotFound(f"no task {task_id}")
        return r

    def tasks_of(self, project_id: int) -> list[dict]:
        with self.rx() as c:
            return [_row(r) for r in c.execute(sa.select(tasks).where(
                tasks.c.project_id == project_id).order_by(tasks.c.id))]

    def set_al_scores(self, project_id: int, scores: dict[int, Optional[float]]) -> None:
        with self.tx() as c:
            for tid, score in scores.items():
                c.execute(tasks.update().where(tasks.c.id == tid,
                                               tasks.c.project_id == project_id)
                          .values(al_score=score))

    def _open_tasks(self, project: dict, user_id: int):
        """Tasks ``user_id`` may still label: not yet labelled by them, and either a gold item
        (every annotator sees those) or one with fewer than R labels. Most uncertain first
        (active learning score), then in the order they were added."""
        count = (sa.select(sa.func.count()).select_from(labels)
                 .where(labels.c.task_id == tasks.c.id).scalar_subquery())
        mine = sa.exists().where(labels.c.task_id == tasks.c.id, labels.c.user_id == user_id)
        return (sa.select(tasks).where(tasks.c.project_id == project["id"], ~mine,
                                       tasks.c.unrenderable.is_(None),
                                       sa.or_(tasks.c.is_gold,
                                              count < project["labels_per_item"]))
                .order_by(tasks.c.al_score.is_(None), tasks.c.al_score.desc(), tasks.c.id))

    def next_task(self, project: dict, user: User) -> Optional[dict]:
        """The item ``user`` should label next, leased to them for ``lease_seconds``: the one
        they already hold if it is still open, else the first open item that the labels it has
        and the live leases of others leave room for (gold items: every annotator); ``None``
        when every open item is held by others. Concurrent annotators are handed different
        items; a lease that expires frees its item.

        Under quality control (``quality.quality_control``) an annotator still calibrating is
        handed only gold items, one who failed nothing, and a calibrated one real work with gold
        items mixed in at the attention rate (and no gold otherwise)."""
        with self.tx() as c:
            at = now()
            c.execute(leases.delete().where(leases.c.expires_at < at))
            held = (sa.select(leases.c.task_id).where(leases.c.user_id == user.id)
                    .scalar_subquery())
            candidates = self._open_tasks(project, user.id)
            pools = [candidates]
            if quality_control(project):
                state = self._quality_state(c, project, user.id)
                if state["status"] == "failed_calibration":
                    return None
                gold = candidates.where(tasks.c.is_gold)
                work = candidates.where(~tasks.c.is_gold)
                if state["status"] == "calibrating":
                    pools = [gold]
                elif self._attention_draw(c, project, user.id):
                    pools = [gold, work]  # no gold left: real work
                else:
                    pools = [work]  # gold only as attention checks once calibrated
            for pool in pools:
                mine = c.execute(pool.where(tasks.c.id.in_(held)).limit(1)).first()
                if mine is not None:
                    return _row(mine)
            for pool in pools:
                row = self._hand_out(c, project, user, at, pool)
                if row is not None:
                    return row
            # every open item is leased to others: none now (progress still counts them)
            return None

    def _hand_out(self, c, project: dict, user: User, at: datetime, candidates) -> Optional[dict]:
        """The first item of ``candidates`` that the labels it has and the live leases of others
        leave room for, leased to ``user`` (in the caller's transaction)."""
        from datetime import timedelta

        taken = (sa.select(sa.func.count()).select_from(labels)
                 .where(labels.c.task_id == tasks.c.id).scalar_subquery()
                 + sa.select(sa.func.count()).select_from(leases)
                 .where(leases.c.task_id == tasks.c.id).scalar_subquery())
        for row in c.execute(candidates.where(sa.or_(
                tasks.c.is_gold, taken < project["labels_per_item"])).limit(20)).all():
            why = unrenderable(_row(row), project["aspects"])
            if why is not None:  # skipped, kept for the admin to see
                log.warning("task %d cannot be shown (%s); kept out of the queue", row.id,
                            why)
                c.execute(tasks.update().where(tasks.c.id == row.id)
                          .values(unrenderable=why))
                continue
            if not row.is_gold:
                # PostgreSQL: the row lock makes a concurrent hand-out of this item wait,
                # then count the lease it took (SQLite: the transaction already holds the
                # write lock)
                c.execute(sa.select(tasks.c.id).where(tasks.c.id == row.id)
                          .with_for_update())
                if c.execute(sa.select(taken).where(tasks.c.id == row.id)).scalar_one() \
                        >= project["labels_per_item"]:
                    continue
            c.execute(leases.delete().where(leases.c.user_id == user.id))
            c.execute(leases.insert().values(
                task_id=row.id, user_id=user.id,
                expires_at=at + timedelta(seconds=self.lease_seconds)))
            return _row(row)
        return None

    # ------------------------------------------------------------------ quality control

    def _gold_labels(self, c, project_id: int, user_id: int) -> list:
        """``user_id``'s labels of gold items in the project, in the order they were given."""
        return c.execute(
            sa.select(labels.c.id, labels.c.value, tasks.c.kind, tasks.c.gold)
            .join(tasks, tasks.c.id == labels.c.task_id)
            .where(tasks.c.project_id == project_id, labels.c.user_id == user_id,
                   tasks.c.is_gold).order_by(labels.c.id)).all()

    def _quality_state(self, c, project: dict, user_id: int) -> dict:
        return calibration_state(project, [gold_score(r.kind, r.value, r.gold)
                                           for r in self._gold_labels(c, project["id"], user_id)])

    def quality_state(self, project: dict, user: User) -> dict:
        """``user``'s calibration state in the project (``quality.calibration_state``)."""
        with self.rx() as c:
            return self._quality_state(c, project, user.id)

    def _attention_draw(self, c, project: dict, user_id: int) -> bool:
        """Whether the next item handed to a calibrated annotator is an attention check: a draw
        at ``attention_rate``, seeded by (project, annotator, labels given so far), so a reload
        draws the same and the checks cannot be told from their place in the queue."""
        rate = project.get("attention_rate") or 0.0
        if rate <= 0:
            return False
        done = c.execute(sa.select(sa.func.count()).select_from(labels).join(
            tasks, tasks.c.id == labels.c.task_id).where(
            tasks.c.project_id == project["id"], labels.c.user_id == user_id)).scalar_one()
        seed = hashlib.sha256(f"alignkit-attention:{project['id']}:{user_id}:{done}"
                              .encode("ascii")).digest()
        return int.from_bytes(seed[:8], "big") / 2 ** 64 < rate

    def _check_calibration_label(self, c, project: dict, label) -> None:
        """A calibration label cannot be changed once the calibration is decided (the decision
        would no longer follow from the labels)."""
        if not (project.get("calibration_items") or 0):
            return
        ids = [r.id for r in self._gold_labels(c, project["id"], label.user_id)]
        n = project["calibration_items"]
        if len(ids) >= n and label.id in ids[:n]:
            raise Conflict("this label is one of your calibration answers, which are final "
                           "once the calibration is decided")

    def progress(self, project: dict, user: User) -> dict:
        """Labels given and items left. Under quality control the items left are the real work
        (plus the calibration items still to answer): attention checks are not announced."""
        with self.rx() as c:
            done = c.execute(sa.select(sa.func.count()).select_from(labels).join(
                tasks, tasks.c.id == labels.c.task_id).where(
                tasks.c.project_id == project["id"], labels.c.user_id == user.id)).scalar_one()
            open_tasks = self._open_tasks(project, user.id).order_by(None)
            out: dict[str, Any] = {}
            if quality_control(project):
                state = self._quality_state(c, project, user.id)
                open_tasks = open_tasks.where(~tasks.c.is_gold)
                out["calibration"] = {k: state[k] for k in (
                    "status", "calibration_done", "calibration_items")}
            left = c.execute(sa.select(sa.func.count()).select_from(
                open_tasks.subquery())).scalar_one()
            if out:
                status = out["calibration"]["status"]
                if status == "failed_calibration":
                    left = 0
                elif status == "calibrating":
                    left += project["calibration_items"] - out["calibration"]["calibration_done"]
        return {"done": done, "left": left, "total": done + left, **out}

    # ------------------------------------------------------------------ labels

    def submit(self, project_id: int, user: User, task_id: int, value: Any,
               reason: str | None = None) -> tuple[dict, bool]:
        """Store ``user``'s label of a task. Returns (label, created). Sending the same label
        again returns the stored one (created False); a different one is a conflict (undo
        first). A non-gold item that already has R labels is a conflict too."""
        project = self.check_access(project_id, user)
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_TEXT):
            raise Invalid(f"reason must be text of at most {MAX_TEXT} characters")
        try:
            with self.tx() as c:
                task = c.execute(sa.select(tasks).where(tasks.c.id == task_id)
                                 .with_for_update()).first()
                if task is None or task.project_id != project_id:
                    raise NotFound(f"no task {task_id} in project {project_id}")
                value = validate_label(value, task.kind, len(task.responses), project["aspects"])
                mine = c.execute(sa.select(labels).where(labels.c.task_id == task_id,
                                                         labels.c.user_id == user.id)).first()
                if mine is not None:
                    if mine.value == value:
                        return _row(mine), False
                    raise Conflict(f"you already labelled task {task_id}; undo it first")
                if quality_control(project):
                    status = self._quality_state(c, project, user.id)["status"]
                    if status == "failed_calibration":
                        raise Forbidden("your calibration answers did not reach this project's "
                                        "accuracy, so your labels are not counted")
                    if status == "calibrating" and not task.is_gold:
                        raise Forbidden("answer your calibration items first (take the next)")
                if not task.is_gold:
                    n = c.execute(sa.select(sa.func.count()).select_from(labels)
                                  .where(labels.c.task_id == task_id)).scalar_one()
                    if n >= project["labels_per_item"]:
                        raise Conflict(f"task {task_id} already has its "
                                       f"{project['labels_per_item']} label(s); take the next")
                row = {"task_id": task_id, "user_id": user.id, "value": value,
                       "reason": (reason or "").strip() or None, "created_at": now(),
                       "shown_order": shown_order(task_id, user.id, len(task.responses))
                       if task.kind == "ranking" else None}
                row["assisted"] = assist_shown(project, task_id, user.id) and c.execute(
                    sa.select(suggestions.c.task_id).where(suggestions.c.task_id == task_id)
                ).first() is not None
                row["id"] = c.execute(labels.insert().values(**row)).inserted_primary_key[0]
                c.execute(leases.delete().where(leases.c.task_id == task_id,
                                                leases.c.user_id == user.id))
                self._audit(c, "label", user.id, project_id, task_id, label_id=row["id"],
                            value=value)
                return row, True
        except IntegrityError:
            # the same user submitting twice at once: the unique constraint kept one
            with self.tx() as c:
                mine = c.execute(sa.select(labels).where(labels.c.task_id == task_id,
                                                         labels.c.user_id == user.id)).first()
            if mine is not None and mine.value == value:
                return _row(mine), False
            raise Conflict(f"you already labelled task {task_id}; undo it first") from None

    def undo_last(self, project_id: int, user: User) -> Optional[dict]:
        """Take back ``user``'s most recent label in the project (the audit log keeps its whole
        record); returns it (None if none)."""
        self.check_access(project_id, user)
        with self.tx() as c:
            last = c.execute(
                sa.select(labels).join(tasks, tasks.c.id == labels.c.task_id)
                .where(tasks.c.project_id == project_id, labels.c.user_id == user.id)
                .order_by(labels.c.created_at.desc(), labels.c.id.desc()).limit(1)).first()
            if last is None:
                return None
            self._check_calibration_label(c, self.project(project_id), last)
            self._keep(c, last, "undo", user)
            c.execute(labels.delete().where(labels.c.id == last.id))
            self._audit(c, "undo", user.id, project_id, last.task_id, label_id=last.id,
                        value=last.value, reason=last.reason, labelled_at=last.created_at)
        return _row(last)

    @staticmethod
    def _keep(c, label, action: str, by: User) -> None:
        """``label`` as it stands, into the label history, in the caller's transaction."""
        c.execute(label_history.insert().values(
            label_id=label.id, task_id=label.task_id, user_id=label.user_id, action=action,
            value=label.value, reason=label.reason, shown_order=label.shown_order,
            labelled_at=label.created_at, by_user_id=by.id, at=now()))

    def edit(self, project_id: int, user: User, task_id: int, value: Any,
             reason: str | None = None) -> dict:
        """Change ``user``'s own label of a task; the label as it was goes into the label
        history and the audit log records both. Returns the label as it now is."""
        project = self.check_access(project_id, user)
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_TEXT):
            raise Invalid(f"reason must be text of at most {MAX_TEXT} characters")
        with self.tx() as c:
            task = c.execute(sa.select(tasks).where(tasks.c.id == task_id)
                             .with_for_update()).first()
            if task is None or task.project_id != project_id:
                raise NotFound(f"no task {task_id} in project {project_id}")
            value = validate_label(value, task.kind, len(task.responses), project["aspects"])
            mine = c.execute(sa.select(labels).where(labels.c.task_id == task_id,
                                                     labels.c.user_id == user.id)).first()
            if mine is None:
                raise NotFound(f"you have no label of task {task_id} to edit")
            reason = (reason or "").strip() or None
            if mine.value == value and mine.reason == reason:
                return _row(mine)
            if task.is_gold:
                self._check_calibration_label(c, project, mine)
            self._keep(c, mine, "edit", user)
            c.execute(labels.update().where(labels.c.id == mine.id).values(
                value=value, reason=reason))
            self._audit(c, "edit", user.id, project_id, task_id, label_id=mine.id,
                        previous=mine.value, previous_reason=mine.reason, value=value,
                        reason=reason)
            return {**_row(mine), "value": value, "reason": reason}

    def label_history_of(self, project_id: int, task_id: int | None = None,
                         label_id: int | None = None) -> list[dict]:
        """The label history of a project (of one task, or of one label), oldest first, with
        the annotator's name and the name of who changed it."""
        by = users.alias("by")
        q = (sa.select(label_history, users.c.name.label("annotator"),
                       by.c.name.label("by"))
             .join(tasks, tasks.c.id == label_history.c.task_id)
             .join(users, users.c.id == label_history.c.user_id)
             .join(by, by.c.id == label_history.c.by_user_id, isouter=True)
             .where(tasks.c.project_id == project_id).order_by(label_history.c.id))
        if task_id is not None:
            q = q.where(label_history.c.task_id == task_id)
        if label_id is not None:
            q = q.where(label_history.c.label_id == label_id)
        with self.rx() as c:
            return [_row(r) for r in c.execute(q)]

    def labels_of_user(self, project_id: int, user: User) -> list[dict]:
        self.check_access(project_id, user)
        with self.rx() as c:
            return [_row(r) for r in c.execute(
                sa.select(labels).join(tasks, tasks.c.id == labels.c.task_id)
                .where(tasks.c.project_id == project_id, labels.c.user_id == user.id)
                .order_by(labels.c.id))]

    def project_labels(self, project_id: int) -> list[dict]:
        """Every label of the project with the annotator's name (admin views, export)."""
        with self.rx() as c:
            return [_row(r) for r in c.execute(
                sa.select(labels, users.c.name.label("annotator"))
                .join(tasks, tasks.c.id == labels.c.task_id)
                .join(users, users.c.id == labels.c.user_id)
                .where(tasks.c.project_id == project_id).order_by(labels.c.id))]

    def count_labels(self, project_id: int | None = None) -> int:
        q = sa.select(sa.func.count()).select_from(labels)
        if project_id is not None:
            q = q.join(tasks, tasks.c.id == labels.c.task_id).where(
                tasks.c.project_id == project_id)
        with self.rx() as c:
            return c.execute(q).scalar_one()

    # ------------------------------------------------------------------ AI assist

    def set_suggestions(self, project_id: int, judge: str,
                        values: dict[int, tuple[dict, Optional[float]]]) -> int:
        """Store (replace) the suggestion of each task ``values`` names: its label-shaped
        answer and the judge's confidence. Returns how many were stored."""
        stamp = now()
        with self.tx() as c:
            ids = set(c.execute(sa.select(tasks.c.id).where(
                tasks.c.project_id == project_id)).scalars())
            for tid, (value, confidence) in values.items():
                if tid not in ids:
                    raise NotFound(f"no task {tid} in project {project_id}")
                c.execute(suggestions.delete().where(suggestions.c.task_id == tid))
                c.execute(suggestions.insert().values(task_id=tid, judge=judge, value=value,
                                                      confidence=confidence, created_at=stamp))
            self._audit(c, "suggest", None, project_id, judge=judge, count=len(values))
        return len(values)

    def suggestions_of(self, project_id: int) -> dict[int, dict]:
        with self.rx() as c:
            return {r.task_id: _row(r) for r in c.execute(
                sa.select(suggestions).join(tasks, tasks.c.id == suggestions.c.task_id)
                .where(tasks.c.project_id == project_id))}

    def suggestion(self, task_id: int) -> Optional[dict]:
        with self.rx() as c:
            return _row(c.execute(sa.select(suggestions).where(
                suggestions.c.task_id == task_id)).first())

    # ------------------------------------------------------------------ disputes

    def resolve(self, task_id: int, admin: User, value: Any, note: str | None = None) -> dict:
        """An admin's decision on a disputed item; it becomes the item's aggregated label."""
        if not admin.is_admin:
            raise Forbidden("only an admin can resolve disputes")
        with self.tx() as c:
            task = c.execute(sa.select(tasks).where(tasks.c.id == task_id)).first()
            if task is None:
                raise NotFound(f"no task {task_id}")
            project = c.execute(sa.select(projects).where(
                projects.c.id == task.project_id)).first()
            value = validate_label(value, task.kind, len(task.responses), project.aspects)
            row = {"task_id": task_id, "user_id": admin.id, "value": value,
                   "note": (note or "").strip() or None, "created_at": now()}
            c.execute(resolutions.delete().where(resolutions.c.task_id == task_id))
            c.execute(resolutions.insert().values(**row))
            self._audit(c, "resolve", admin.id, task.project_id, task_id, value=value,
                        note=row["note"])
        return row

    def resolutions_of(self, project_id: int) -> dict[int, dict]:
        with self.rx() as c:
            return {r.task_id: _row(r) for r in c.execute(
                sa.select(resolutions, users.c.name.label("admin"))
                .join(tasks, tasks.c.id == resolutions.c.task_id)
                .join(users, users.c.id == resolutions.c.user_id)
                .where(tasks.c.project_id == project_id))}


# ---------------------------------------------------------------------- validation


def check_assist(assist: str) -> None:
    if assist not in ASSIST:
        raise Invalid(f"assist must be one of {', '.join(ASSIST)}, got {assist!r}")


def check_quality_settings(calibration_items: int, calibration_accuracy: float,
                           attention_rate: float) -> None:
    if isinstance(calibration_items, bool) or not isinstance(calibration_items, int) \
            or calibration_items < 0:
        raise Invalid(f"calibration items must be an integer >= 0, got {calibration_items!r}")
    if not 0.0 <= calibration_accuracy <= 1.0:
        raise Invalid(f"calibration accuracy must be in [0, 1], got {calibration_accuracy}")
    if not 0.0 <= attention_rate < 1.0:
        raise Invalid(f"attention rate must be in [0, 1), got {attention_rate}")


def _is_text(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_TEXT
    return (isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                            and isinstance(m.get("content"), str)
                                            for m in value))


def text_of(value: Any) -> str:
    """A prompt or response as plain text (chat messages as ``role: content`` lines)."""
    if isinstance(value, list):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in value)
    return str(value)


def unrenderable(task: dict, aspects: list[str]) -> str | None:
    """Why a stored task cannot be shown to an annotator (``None``: it can)."""
    try:
        validate_task({**task, "gold": task.get("gold")}, aspects)
    except Invalid as e:
        return str(e)
    return None


def validate_task(item: dict, aspects: list[str]) -> dict:
    from alignkit.data.readers import lone_surrogate

    bad = lone_surrogate([item.get("prompt"), item.get("responses")])
    if bad is not None:
        raise Invalid(f"task text holds a lone surrogate ({bad}), which is not text")
    kind = item.get("kind")
    if kind not in KINDS:
        raise Invalid(f"task kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not _is_text(item.get("prompt")) or not item.get("prompt"):
        raise Invalid("task prompt must be non-empty text or chat messages")
    responses = item.get("responses")
    if not isinstance(responses, list) or not all(_is_text(r) for r in responses):
        raise Invalid("task responses must be a list of texts")
    if kind == "pairwise" and len(responses) != 2:
        raise Invalid(f"a pairwise task has exactly 2 responses, got {len(responses)}")
    if kind == "ranking" and len(responses) < 2:
        raise Invalid("a ranking task needs at least 2 responses")
    gold = item.get("gold")
    if gold is not None:
        gold = validate_label(gold, kind, len(responses), aspects, partial=True)
    return {"kind": kind, "prompt": item["prompt"], "responses": responses,
            "is_gold": gold is not None, "gold": gold, "meta": item.get("meta")}


def validate_label(value: Any, kind: str, k: int, aspects: list[str],
                   partial: bool = False) -> dict:
    """A label's canonical form, or ``Invalid`` naming what is wrong. ``partial``: a gold answer
    may cover only some aspects."""
    if not isinstance(value, dict):
        raise Invalid("label must be a JSON object")
    if kind == "pairwise":
        choices = value.get("choices")
        if not isinstance(choices, dict) or not choices:
            raise Invalid('a pairwise label needs "choices": {aspect: "A" | "B" | "tie"}')
        unknown = [a for a in choices if a not in aspects]
        if unknown:
            raise Invalid(f"unknown aspect(s) {', '.join(map(repr, unknown))}; this project "
                          f"judges {', '.join(aspects)}")
        missing = [a for a in aspects if a not in choices]
        if missing and not partial:
            raise Invalid(f"choose A, B or tie for every aspect; missing "
                          f"{', '.join(missing)}")
        bad = [a for a, c in choices.items() if c not in CHOICES]
        if bad:
            raise Invalid(f"aspect {bad[0]!r}: choice must be A, B or tie")
        return {"choices": {a: choices[a] for a in aspects if a in choices}}
    ranking = value.get("ranking")
    if (not isinstance(ranking, list) or any(isinstance(x, bool) or not isinstance(x, int)
                                             for x in ranking)
            or sorted(ranking) != list(range(k))):
        raise Invalid(f'a ranking label needs "ranking": every response index 0..{k - 1} once, '
                      "best first")
    return {"ranking": list(ranking)}


# ---------------------------------------------------------------------- feedback from deployment
# ``alignkit serve --feedback-db``: signed-in users chat with the served policy and rate its
# answers. A conversation is a list of turns; a turn is one user message, the whole conversation
# up to it as the model saw it (``prompt``, chat messages: what a preference record's prompt is),
# and the answers shown for it (one, or two side by side), each with where it came from. The
# answer a user picked (or the only one) continues the conversation.
chat_conversations = sa.Table(
    "chat_conversations", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("created_at", TS, nullable=False),
)
chat_turns = sa.Table(
    "chat_turns", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("conversation_id", sa.Integer,
              sa.ForeignKey("chat_conversations.id", ondelete="CASCADE"), nullable=False,
              index=True),
    sa.Column("message", sa.Text, nullable=False),  # the user's message of this turn
    sa.Column("prompt", sa.JSON, nullable=False),  # chat messages, ending with that message
    # the answer picked side by side (an id of chat_answers; no foreign key: answers point here)
    sa.Column("picked_answer_id", sa.Integer, nullable=True),
    sa.Column("picked_at", TS, nullable=True),
    sa.Column("created_at", TS, nullable=False),
)
chat_answers = sa.Table(
    "chat_answers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("turn_id", sa.Integer, sa.ForeignKey("chat_turns.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("slot", sa.Integer, nullable=False),  # 0 = A (or the only answer), 1 = B
    sa.Column("content", sa.Text, nullable=False),
    # provenance: which policy, how it was sampled, when
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("temperature", sa.Float, nullable=False),
    sa.Column("top_p", sa.Float, nullable=False),
    sa.Column("max_tokens", sa.Integer, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("created_at", TS, nullable=False),
)
chat_ratings = sa.Table(
    "chat_ratings", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("answer_id", sa.Integer, sa.ForeignKey("chat_answers.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("value", sa.Integer, nullable=False),  # +1 thumbs up, -1 thumbs down
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("created_at", TS, nullable=False),
    sa.UniqueConstraint("answer_id", "user_id", name="uq_chat_rating_answer_user"),
)
PROVENANCE = ("model", "temperature", "top_p", "max_tokens", "seed")


def _answer_json(a: dict) -> dict:
    return {"id": a["id"], "slot": a["slot"], "content": a["content"],
            **{k: a[k] for k in PROVENANCE}, "created_at": a["created_at"].isoformat()}


class ChatFeedback:
    """The reads and writes of deployment feedback, on a ``Store``'s database. Every method that
    takes a user acts on that user's own conversations only (another user's ids answer 404)."""

    def __init__(self, store: Store):
        self.store = store

    def _own_conversation(self, c, user: User, conversation_id: int):
        row = c.execute(sa.select(chat_conversations).where(
            chat_conversations.c.id == conversation_id,
            chat_conversations.c.user_id == user.id)).first()
        if row is None:
            raise NotFound(f"no conversation {conversation_id}")
        return row

    def _own_turn(self, c, user: User, turn_id: int):
        row = c.execute(sa.select(chat_turns).join(
            chat_conversations, chat_conversations.c.id == chat_turns.c.conversation_id).where(
            chat_turns.c.id == turn_id, chat_conversations.c.user_id == user.id)).first()
        if row is None:
            raise NotFound(f"no turn {turn_id}")
        return row

    def next_prompt(self, user: User, conversation_id: int | None, message: str
                    ) -> tuple[int, list[dict]]:
        """The conversation (a new one when ``None``) and the chat messages the model answers:
        every earlier turn with the answer that continued it (picked, else the first), then
        ``message``. Built here, from what is stored, so a client cannot put words in the
        model's mouth."""
        from alignkit.data.readers import lone_surrogate

        if not isinstance(message, str) or not message.strip():
            raise Invalid("the message must be non-empty text")
        if len(message) > MAX_TEXT or lone_surrogate(message) is not None:
            raise Invalid(f"the message must be text of at most {MAX_TEXT} characters")
        with self.store.tx() as c:
            if conversation_id is None:
                conversation_id = c.execute(chat_conversations.insert().values(
                    user_id=user.id, created_at=now())).inserted_primary_key[0]
                return conversation_id, [{"role": "user", "content": message}]
            self._own_conversation(c, user, conversation_id)
            last = c.execute(sa.select(chat_turns).where(
                chat_turns.c.conversation_id == conversation_id)
                .order_by(chat_turns.c.id.desc()).limit(1)).first()
            if last is None:
                return conversation_id, [{"role": "user", "content": message}]
            answers = c.execute(sa.select(chat_answers).where(
                chat_answers.c.turn_id == last.id).order_by(chat_answers.c.slot)).all()
            kept = next((a for a in answers if a.id == last.picked_answer_id), answers[0])
            return conversation_id, [*last.prompt, {"role": "assistant", "content": kept.content},
                                     {"role": "user", "content": message}]

    def add_turn(self, conversation_id: int, prompt: list[dict], answers: list[dict]) -> dict:
        """Store a turn and the answers shown for it (``{content, model, temperature, top_p,
        max_tokens, seed}`` each, in slot order)."""
        stamp = now()
        with self.store.tx() as c:
            turn_id = c.execute(chat_turns.insert().values(
                conversation_id=conversation_id, message=prompt[-1]["content"], prompt=prompt,
                created_at=stamp)).inserted_primary_key[0]
            stored = []
            for slot, a in enumerate(answers):
                row = {"turn_id": turn_id, "slot": slot, "content": a["content"],
                       **{k: a[k] for k in PROVENANCE}, "created_at": stamp}
                row["id"] = c.execute(chat_answers.insert().values(**row)).inserted_primary_key[0]
                stored.append(_answer_json(row))
        return {"conversation_id": conversation_id, "turn_id": turn_id, "answers": stored}

    def pick(self, user: User, turn_id: int, answer_id: int) -> None:
        """The user prefers ``answer_id`` of a side-by-side turn (picking again changes it)."""
        with self.store.tx() as c:
            self._own_turn(c, user, turn_id)
            answers = [r.id for r in c.execute(sa.select(chat_answers.c.id).where(
                chat_answers.c.turn_id == turn_id))]
            if len(answers) < 2:
                raise Invalid("only a turn with answers side by side has a pick")
            if answer_id not in answers:
                raise NotFound(f"no answer {answer_id} in turn {turn_id}")
            c.execute(chat_turns.update().where(chat_turns.c.id == turn_id).values(
                picked_answer_id=answer_id, picked_at=now()))

    def rate(self, user: User, answer_id: int, value: Any, reason: Any = None) -> None:
        """Thumbs up (``"up"``) or down (``"down"``) on one of the user's answers, with an
        optional reason; rating again replaces the rating."""
        if value not in ("up", "down"):
            raise Invalid('the rating must be "up" or "down"')
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_TEXT):
            raise Invalid(f"the reason must be text of at most {MAX_TEXT} characters")
        with self.store.tx() as c:
            row = c.execute(sa.select(chat_answers.c.turn_id).where(
                chat_answers.c.id == answer_id)).first()
            if row is None:
                raise NotFound(f"no answer {answer_id}")
            try:
                self._own_turn(c, user, row.turn_id)
            except NotFound:
                raise NotFound(f"no answer {answer_id}") from None
            c.execute(chat_ratings.delete().where(chat_ratings.c.answer_id == answer_id,
                                                  chat_ratings.c.user_id == user.id))
            c.execute(chat_ratings.insert().values(
                answer_id=answer_id, user_id=user.id, value=1 if value == "up" else -1,
                reason=(reason or "").strip() or None, created_at=now()))

    def _conversations(self, c, user_id: int | None, conversation_id: int | None = None
                       ) -> list[dict]:
        q = sa.select(chat_conversations, users.c.name.label("user")).join(
            users, users.c.id == chat_conversations.c.user_id)
        if user_id is not None:
            q = q.where(chat_conversations.c.user_id == user_id)
        if conversation_id is not None:
            q = q.where(chat_conversations.c.id == conversation_id)
        out = []
        for conv in c.execute(q.order_by(chat_conversations.c.id)):
            turns = []
            for t in c.execute(sa.select(chat_turns).where(
                    chat_turns.c.conversation_id == conv.id).order_by(chat_turns.c.id)):
                answers = []
                for a in c.execute(sa.select(chat_answers).where(
                        chat_answers.c.turn_id == t.id).order_by(chat_answers.c.slot)):
                    ratings = [{"value": "up" if r.value > 0 else "down", "reason": r.reason,
                                "at": r.created_at.isoformat()}
                               for r in c.execute(sa.select(chat_ratings).where(
                                   chat_ratings.c.answer_id == a.id))]
                    answers.append({**_answer_json(_row(a)), "ratings": ratings})
                turns.append({"id": t.id, "message": t.message, "prompt": t.prompt,
                              "answers": answers, "picked_answer_id": t.picked_answer_id,
                              "created_at": t.created_at.isoformat()})
            out.append({"id": conv.id, "user": conv.user, "user_id": conv.user_id,
                        "created_at": conv.created_at.isoformat(), "turns": turns})
        return out

    def conversations_of(self, user: User) -> list[dict]:
        """Everything stored of the user's conversations (their export)."""
        with self.store.rx() as c:
            return self._conversations(c, user.id)

    def all_conversations(self) -> list[dict]:
        with self.store.rx() as c:
            return self._conversations(c, None)

    def conversation(self, conversation_id: int) -> dict:
        with self.store.rx() as c:
            found = self._conversations(c, None, conversation_id)
        if not found:
            raise NotFound(f"no conversation {conversation_id}")
        return found[0]

    def delete(self, user: User, conversation_id: int | None = None) -> int:
        """Delete one of the user's conversations, or all of them (``None``), with their turns,
        answers and ratings; returns how many conversations went."""
        with self.store.tx() as c:
            q = sa.select(chat_conversations.c.id).where(chat_conversations.c.user_id == user.id)
            if conversation_id is not None:
                self._own_conversation(c, user, conversation_id)
                q = q.where(chat_conversations.c.id == conversation_id)
            ids = [r.id for r in c.execute(q)]
            if ids:
                # explicit, child tables first: SQLite enforces ON DELETE only with a pragma on
                turns = sa.select(chat_turns.c.id).where(chat_turns.c.conversation_id.in_(ids))
                answers = sa.select(chat_answers.c.id).where(chat_answers.c.turn_id.in_(turns))
                c.execute(chat_ratings.delete().where(chat_ratings.c.answer_id.in_(answers)))
                c.execute(chat_answers.delete().where(chat_answers.c.turn_id.in_(turns)))
                c.execute(chat_turns.delete().where(chat_turns.c.conversation_id.in_(ids)))
                c.execute(chat_conversations.delete().where(chat_conversations.c.id.in_(ids)))
        return len(ids)

    def send_to_review(self, conversation_id: int, project_id: int, admin: User) -> list[int]:
        """Each side-by-side turn of a conversation as a pairwise task of a project's queue
        (prompt = the conversation up to the turn), for expert labels; returns the task ids."""
        conv = self.conversation(conversation_id)
        items = [{"kind": "pairwise", "prompt": t["prompt"],
                  "responses": [a["content"] for a in t["answers"][:2]],
                  "meta": {"source": f"deployment:conversation {conversation_id} turn {t['id']}",
                           "conversation_id": conversation_id, "turn_id": t["id"],
                           "provenance": [{k: a[k] for k in PROVENANCE}
                                          for a in t["answers"][:2]]}}
                 for t in conv["turns"] if len(t["answers"]) >= 2]
        if not items:
            raise Invalid(f"conversation {conversation_id} has no turn with two answers side by "
                          "side to compare")
        return self.store.add_tasks(project_id, items, created_by=admin.id)
