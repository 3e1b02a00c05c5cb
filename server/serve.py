"""``mtqpd serve``: the MTQP server over an existing store, until SIGTERM.

The wiring between the command line and ``server.net``: the site key file,
the certificates and the names they serve, the listen addresses, the file
descriptor limit, and the signals. The store is opened read-only, so the
server runs beside the process that writes it (``mtqpd tail``) and sees
what that process flushes (``TinyStore`` reloads changed partitions).
"""

from __future__ import annotations

import base64
import binascii
import gc
import logging
import os
import re
import resource
import secrets
import signal
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

import trio

from ingest.memory import DEFAULT_MEMORY
from ingest.store.tiny import TinyStore

from .auth import Network
from .net import DEFAULT_ADDRESSES, Identity, Limits, Server, tls_context

log = logging.getLogger(__name__)

#: The site key's length when this module makes one: HMAC-SHA256's block
#: is longer, its output is this long, and more adds nothing.
SITE_KEY_BYTES = 32
#: A shorter key is refused: it would be the weak point of every keyed certifier.
MIN_SITE_KEY_BYTES = 16
#: Descriptors beyond one per connection: listeners, the store's files, logs.
SPARE_FDS = 64


class ConfigError(Exception):
    """A configuration the server cannot start with; the message says why."""


def load_site_key(path: Path | str) -> bytes:
    """The site key of the keyed certifiers, made on first use.

    Whoever needs it first (``mtqpd serve``, ``mtqpd secret``) creates it:
    32 random octets in a temporary file of mode 0600, published by
    ``os.link``, which fails if the name exists. So two processes starting
    together agree on one key, and no reader ever sees a half-written one.
    """
    path = Path(path)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = _create_site_key(path)
    except OSError as exc:
        raise ConfigError(f"cannot read the site key {path}: {exc.strerror or exc}") from None
    if len(key) < MIN_SITE_KEY_BYTES:
        raise ConfigError(f"the site key {path} holds {len(key)} octets; at least {MIN_SITE_KEY_BYTES} are needed")
    if path.stat().st_mode & 0o077:
        log.warning("the site key %s is readable by others than its owner (chmod 600 it)", path)
    return key


def _create_site_key(path: Path) -> bytes:
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    key = secrets.token_bytes(SITE_KEY_BYTES)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)
        except FileExistsError:  # another process made it first: theirs is the key
            return path.read_bytes()
        finally:
            temp.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot create the site key {path}: {exc.strerror or exc}") from None
    log.info("made a new site key in %s", path)
    return key


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """One DER element at ``pos``: (tag, start of contents, end)."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    if pos + length > len(data):
        raise ValueError("truncated DER element")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        element = _der(data, start)
        out.append(element)
        start = element[2]
    return out


_OCTETS, _EXTENSIONS, _DNS_NAME = 0x04, 0xA3, 0x82
_SUBJECT_ALT_NAME = bytes([0x55, 0x1D, 0x11])  # 2.5.29.17


def certificate_names(der: bytes) -> tuple[str, ...]:
    """The dNSName entries of a certificate's subjectAltName, lower case.

    RFC 3887 section 6 matches the STARTTLS FQDN against exactly these; the
    ssl module decodes them only for peer certificates, never for the
    server's own, hence this walk (RFC 5280 section 4.1: Certificate >
    tbsCertificate > [3] extensions > Extension > subjectAltName >
    GeneralNames > [2] dNSName).
    """
    try:
        _, start, end = _der(der, 0)
        _, start, end = _der(der, start)  # tbsCertificate
        for tag, s, e in _children(der, start, end):
            if tag != _EXTENSIONS:
                continue
            _, s, e = _der(der, s)
            for _, xs, xe in _children(der, s, e):
                parts = _children(der, xs, xe)
                oid, value = parts[0], parts[-1]
                if der[oid[1] : oid[2]] == _SUBJECT_ALT_NAME and value[0] == _OCTETS:
                    _, ns, ne = _der(der, value[1])
                    names = _children(der, ns, ne)
                    return tuple(der[a:b].decode("ascii").lower() for kind, a, b in names if kind == _DNS_NAME)
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a certificate this server can read: {exc}") from None
    return ()


_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)


def _first_certificate(pem: str) -> bytes:
    """The leaf of a PEM chain (it comes first, as ``load_cert_chain``
    requires), as DER."""
    m = _PEM_CERTIFICATE.search(pem)
    if m is None:
        raise ValueError("no PEM certificate in the file")
    return base64.b64decode("".join(m[1].split()), validate=True)


def load_identity(cert_file: str, key_file: str) -> Identity:
    """A certificate chain (PEM) and its key, under the server's TLS
    policy, with the names the certificate is valid for."""
    context = tls_context()
    try:
        context.load_cert_chain(cert_file, key_file)
        names = certificate_names(_first_certificate(Path(cert_file).read_text(encoding="ascii", errors="replace")))
    except (OSError, ValueError, ssl.SSLError, binascii.Error) as exc:
        raise ConfigError(f"cannot use the certificate {cert_file} with the key {key_file}: {exc}") from None
    if not names:
        raise ConfigError(f"the certificate {cert_file} names no host (no subjectAltName dNSName)")
    return Identity(names, context)


def parse_listen(text: str) -> tuple[str | None, int]:
    """``ADDR:PORT``, ``[IPV6]:PORT``, ``*:PORT`` (every address) or ``PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "*", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets: [{host}]:{port}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not a port: {port!r}")
    return (None if host in ("", "*") else host), int(port)


def raise_fd_limit(needed: int) -> int:
    """Raise the soft limit on open files toward ``needed`` (at most to the
    hard limit): every connection holds a descriptor, and a common soft
    limit of 1024 would cap connections below the configured number."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning("open files are limited to %d: fewer connections than configured can be served", target)
    return target


def freeze_loaded_heap() -> None:
    """Take what is loaded now (the modules, their grammars, the store's
    connection) out of the cyclic collector's sight: a full collection
    would walk them again and again, to find nothing, while every
    connection waits."""
    gc.collect()
    gc.freeze()


async def serve_until_signalled(server: Server, addresses: Sequence[tuple[str | None, int]]) -> None:
    """Serve until SIGTERM or SIGINT, then cancel every connection and
    return. SIGUSR1 pauses the service (RFC 3887's ``/admin``), SIGUSR2
    resumes it."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2) as signals:
        try:
            listeners = await server.listen(addresses)
        except OSError as exc:
            raise ConfigError(f"cannot listen: {exc.strerror or exc}") from None
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            for listener in listeners:
                host, port = listener.socket.getsockname()[:2]
                log.info("listening on %s", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    server.paused = True
                    log.info("paused: new connections and queries get -TEMP/admin")
                elif signum == signal.SIGUSR2:
                    server.paused = False
                    log.info("resumed")
                else:
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break


def run(
    store_path: Path,
    *,
    listen: Sequence[tuple[str | None, int]] = DEFAULT_ADDRESSES,
    tls: Sequence[tuple[str, str]] = (),
    tls_required: bool = False,
    site_key_file: Path | None = None,
    reporting_mta: str | None = None,
    hide_internal: bool = False,
    trusted: Sequence[Network] = (),
    limits: Limits,
    memory: int = DEFAULT_MEMORY,
) -> None:
    """``mtqpd serve``: load the configuration, then serve until signalled.
    The reporting MTA defaults to this host's FQDN. Raises ``ConfigError``
    when the configuration cannot be served."""
    if tls_required and not tls:
        raise ConfigError("--tls-required needs a certificate (--tls-cert and --tls-key)")
    if not store_path.is_dir():
        raise ConfigError(f"no store at {store_path} (mtqpd replay --store {store_path} LOG... makes one)")
    site_key = load_site_key(site_key_file or store_path / "site.key")
    identities = [load_identity(cert, key) for cert, key in tls]
    raise_fd_limit(limits.max_connections + SPARE_FDS)
    store = TinyStore(store_path, readonly=True, memory=memory)
    freeze_loaded_heap()
    server = Server(
        store,
        site_key=site_key,
        reporting_mta=reporting_mta or socket.getfqdn(),
        identities=identities,
        tls_required=tls_required,
        hide_internal=hide_internal,
        trusted=trusted,
        limits=limits,
    )
    try:
        trio.run(serve_until_signalled, server, listen)
    finally:
        store.close()
