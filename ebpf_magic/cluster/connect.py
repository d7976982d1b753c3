"""The engines of an ipyparallel cluster, called in parallel with a deadline.

:func:`connect` wraps an ``ipyparallel.Client`` (one it opens from a profile, or one
the user made). :meth:`Engines.call` sends one call to every chosen engine before
waiting for any, and gives back what each answered and, for the others, why not:
an engine that died, left the cluster or did not answer in time is a reason, never
an exception that loses the other engines' answers, and never a hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ebpf_magic.errors import BPFError

DEFAULT_TIMEOUT = 30.0
"""Seconds an engine has to answer one call (starting a program included)."""


class Failure(NamedTuple):
    """Why an engine gave no answer; ``gone`` when it never will (it died or left)."""

    reason: str
    gone: bool = False


class ClusterError(BPFError):
    """The cluster cannot be reached, or a cell's targets name no engine of it."""


class ClusterWarning(UserWarning):
    """A frame lacks some hosts' rows: their engines died, left or did not answer."""


def _ipyparallel() -> Any:
    try:
        import ipyparallel
    except ImportError as e:
        raise ClusterError(f"ipyparallel is not installed ({e})",
                           "Install the cluster extra: pip install 'ebpf_magic[cluster]'.") \
            from None
    return ipyparallel


class Engines:
    """Engines of one cluster, by id, with the host each runs on.

    ``targets`` chooses the engines cells run on by default: ``"all"``, engine ids
    (``[0, 2]`` or ``"0,2"``) or host names (``"web1,web2"``).
    """

    def __init__(self, client: Any, targets: str | Sequence[int | str] = "all",
                 timeout: float = DEFAULT_TIMEOUT, profile: str | None = None) -> None:
        self.client = client
        self.profile = profile
        self.timeout = timeout
        self.targets = targets
        self._hosts: dict[int, str] = {}

    @property
    def ids(self) -> list[int]:
        """Engines registered with the controller now."""
        return list(self.client.ids)

    def hosts(self, ids: Sequence[int] | None = None) -> dict[int, str]:
        """``{engine id: host name}``, asking engines not yet asked."""
        from ebpf_magic.cluster import engine

        ids = self.ids if ids is None else list(ids)
        unknown = [i for i in ids if i not in self._hosts]
        if unknown:
            answers, _ = self.call(unknown, engine.facts)
            self._hosts.update({i: a["host"] for i, a in answers.items()})
        return {i: self._hosts.get(i, f"engine {i}") for i in ids}

    def host(self, engine: int) -> str:
        """The host of ``engine`` if known, without asking it; else ``"engine N"``."""
        return self._hosts.get(engine, f"engine {engine}")

    def select(self, targets: str | Sequence[int | str] | None = None) -> list[int]:
        """Engine ids that ``targets`` (default: this object's) names; ClusterError if none.

        A word that is a number is an engine id; any other word a host name, meaning
        every engine on that host.
        """
        targets = self.targets if targets is None else targets
        words = ([w.strip() for w in targets.split(",") if w.strip()]
                 if isinstance(targets, str) else [str(t) for t in targets])
        ids = self.ids
        if not ids:
            raise ClusterError("the cluster has no engines",
                               "Start some (ipcluster start -n 2, or ipcluster engines), "
                               "then run the cell again.")
        if words == ["all"]:
            return ids
        hosts = self.hosts(ids)
        chosen: list[int] = []
        unknown = []
        for word in words:
            found = ([int(word)] if word.isdigit() and int(word) in ids else
                     [i for i in ids if hosts[i] == word])
            if not found:
                unknown.append(word)
            chosen += [i for i in found if i not in chosen]
        if unknown:
            known = ", ".join(f"{i} ({hosts[i]})" for i in ids)
            raise ClusterError(f"no engine or host named {', '.join(map(repr, unknown))}",
                               f"Engines: {known}; or use --targets all.")
        return chosen

    def call(self, ids: Sequence[int], func: Callable[..., Any], *args: Any,
             timeout: float | None = None) -> tuple[dict[int, Any], dict[int, Failure]]:
        """Call ``func(*args)`` on every engine of ``ids`` at once.

        Returns ``(answers, failures)``: ``{id: result}`` and ``{id: Failure}``.
        ``timeout`` (default :attr:`timeout`) bounds the whole call.
        """
        ipp = _ipyparallel()
        timeout = self.timeout if timeout is None else timeout
        registered = set(self.client.ids)
        failures: dict[int, Failure] = {}
        pending = {}
        for i in ids:
            if i not in registered:
                failures[i] = Failure("its engine left the cluster (killed, crashed or shut "
                                      "down)", gone=True)
                continue
            pending[i] = self.client[i].apply_async(func, *args)
        answers: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        for i, result in pending.items():
            try:
                answers[i] = result.get(max(deadline - time.monotonic(), 0.0))
            except ipp.error.TimeoutError:
                failures[i] = Failure(f"no answer within {timeout:g} s: the engine is "
                                      "unreachable or busy")
            except ipp.error.EngineError:
                failures[i] = Failure("its engine died (killed or crashed)", gone=True)
            except ipp.error.RemoteError as e:
                failures[i] = Failure(f"{e.ename}: {e.evalue}")
        return answers, failures

    def send(self, ids: Sequence[int], func: Callable[..., Any], *args: Any) -> None:
        """Queue ``func(*args)`` on the registered engines of ``ids`` without waiting.

        An engine runs its calls in order, so this one runs after any still running there.
        """
        registered = set(self.client.ids)
        for i in ids:
            if i in registered:
                self.client[i].apply_async(func, *args)

    def close(self) -> None:
        """Close the client's connections (engines and controller keep running).

        The next :func:`connect` to its profile connects again.
        """
        for profile, client in list(_clients.items()):
            if client is self.client:
                del _clients[profile]
        self.client.close()

    def __repr__(self) -> str:
        return f"<Engines {self.ids} targets={self.targets!r} timeout={self.timeout:g}s>"


_current: Engines | None = None
_clients: dict[str, Any] = {}  # the Client opened for each profile, kept open for the next cell


def connect(cluster: Any = None, client: Any = None,
            targets: str | Sequence[int | str] = "all",
            timeout: float = DEFAULT_TIMEOUT, *, profile: str | None = None) -> Engines:
    """The engines of a running cluster: ``cluster`` is an ``ipyparallel.Client`` you made
    (``connect(rc)``) or the name of an ipyparallel profile whose controller to reach
    (``connect("fleet")``; None: the default profile). ``client=`` and ``profile=`` name
    them by keyword.

    The result is also what ``%%bpf NAME --targets TARGETS`` uses afterwards. ``timeout``
    bounds reaching the controller and each later call to the engines. A profile's
    controller is connected to once: later calls for it share that client until
    :meth:`Engines.close`.
    """
    global _current
    if cluster is not None and not isinstance(cluster, str):
        if client is not None or not isinstance(cluster, _ipyparallel().Client):
            raise ClusterError(
                f"connect() takes an ipyparallel.Client or a profile's name, not "
                f"{type(cluster).__name__}",
                "connect(rc) with rc = ipyparallel.Client(...), or connect('PROFILE').")
        client = cluster
    elif cluster is not None:
        if profile is not None and profile != cluster:
            raise ClusterError(f"two profiles named: {cluster!r} and profile={profile!r}",
                               "Name the profile once.")
        profile = cluster
    if client is None:
        client = _client(profile or "default", timeout)
    _current = Engines(client, targets, timeout, profile)
    return _current


def _client(profile: str, timeout: float) -> Any:
    """The open Client of ``profile``, connecting to its controller if there is none."""
    ipp = _ipyparallel()
    if profile in _clients:
        return _clients[profile]
    try:
        client = ipp.Client(profile=profile, timeout=timeout)
    except (OSError, TimeoutError, ipp.error.TimeoutError) as e:
        raise ClusterError(
            f"cannot reach the ipyparallel controller of profile {profile!r}: {e}",
            "Start a cluster (ipcluster start -n 2 --profile=PROFILE, or see the README, "
            "Many hosts), or pass the Client you made: connect(rc).") from None
    _clients[profile] = client
    return client


def current(profile: str | None = None) -> Engines:
    """The engines :func:`connect` last gave for ``profile`` (or any), connecting if none."""
    if _current is not None and profile in (None, _current.profile):
        return _current
    return connect(profile)
