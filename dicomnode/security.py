"""Who may associate with the node, and the TLS contexts it listens and sends with.

Access control runs on pynetdicom's EVT_REQUESTED notification: the A-ASSOCIATE-RQ has been read
but nothing negotiated yet, which is the point where pynetdicom itself rejects on its own
`require_calling_aet` list (ACSE._negotiate_as_acceptor). We use our own handler because
pynetdicom's list cannot tie an AE title to the addresses it may call from.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import evt

LOGGER = logging.getLogger(__name__)

# A-ASSOCIATE-RJ fields, PS3.8 section 9.3.4 (table 9-21).
RESULT_REJECTED_PERMANENT = 0x01
RESULT_REJECTED_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_SERVICE_PROVIDER_ACSE = 0x02
SOURCE_SERVICE_PROVIDER_PRESENTATION = 0x03
REASON_NO_REASON_GIVEN = 0x01
REASON_CALLING_AE_NOT_RECOGNISED = 0x03
REASON_CALLED_AE_NOT_RECOGNISED = 0x07
REASON_LOCAL_LIMIT_EXCEEDED = 0x02  # with SOURCE_SERVICE_PROVIDER_PRESENTATION

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# One minimum for every secret that guards patient data (web token, patient-ID salt).
MIN_SECRET_LENGTH = 16

class SecurityConfigError(ValueError):
    """An access-control or TLS setting cannot be used (names the setting and what is valid)."""


@dataclass(frozen=True)
class Rejection:
    """Why an association is refused, as the three A-ASSOCIATE-RJ codes plus a log line."""

    result: int
    source: int
    reason: int
    explanation: str

    @property
    def codes(self) -> tuple[int, int, int]:
        return (self.result, self.source, self.reason)


def _parse_networks(ae_title: str, addresses: Iterable[str]) -> tuple[IPNetwork, ...]:
    networks = []
    for text in addresses:
        try:
            # strict=False: "10.0.0.7/24" means the /24 around it, as an admin would expect
            networks.append(ipaddress.ip_network(str(text).strip(), strict=False))
        except ValueError as exc:
            raise SecurityConfigError(
                f"allowed_callers.{ae_title}: {text!r} is not an IP address or network "
                "(valid: '192.0.2.10', '192.0.2.0/24', '2001:db8::/64')"
            ) from exc
    return tuple(networks)


@dataclass(frozen=True)
class AccessPolicy:
    """The node's called AE title(s) and the calling AE titles allowed to associate.

    `allowed_callers` maps a calling AE title to the networks it may connect from; an empty
    tuple means any address. An empty mapping admits every calling AE (the default: open node).
    An empty `called_ae_titles` accepts any called AE title.
    """

    called_ae_titles: frozenset[str] = frozenset()
    allowed_callers: Mapping[str, tuple[IPNetwork, ...]] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls,
        called_ae_titles: Iterable[str] | str | None = None,
        allowed_callers: Mapping[str, Iterable[str] | None] | Iterable[str] | None = None,
    ) -> AccessPolicy:
        """Build from config values: callers as a list of titles or {title: [address, ...]}."""
        if isinstance(called_ae_titles, str):
            called_ae_titles = [called_ae_titles]
        called = frozenset(t.strip() for t in called_ae_titles or [] if t.strip())
        if allowed_callers is None:
            callers: dict[str, tuple[IPNetwork, ...]] = {}
        elif isinstance(allowed_callers, Mapping):
            callers = {
                str(title).strip(): _parse_networks(str(title), addresses or [])
                for title, addresses in allowed_callers.items()
            }
        else:
            callers = {str(title).strip(): () for title in allowed_callers}
        for title in [*called, *callers]:
            if not title or len(title) > 16 or "\\" in title:
                raise SecurityConfigError(
                    f"AE title {title!r}: must be 1-16 characters without backslash"
                )
        return cls(called_ae_titles=called, allowed_callers=callers)

    def check(self, calling_ae: str, called_ae: str, address: str) -> Rejection | None:
        """None when the association may proceed, else the rejection to send."""
        calling_ae, called_ae = calling_ae.strip(), called_ae.strip()
        if self.called_ae_titles and called_ae not in self.called_ae_titles:
            return Rejection(
                RESULT_REJECTED_PERMANENT,
                SOURCE_SERVICE_USER,
                REASON_CALLED_AE_NOT_RECOGNISED,
                f"called AE {called_ae!r} is not this node ({sorted(self.called_ae_titles)})",
            )
        if not self.allowed_callers:
            return None
        if calling_ae not in self.allowed_callers:
            return Rejection(
                RESULT_REJECTED_PERMANENT,
                SOURCE_SERVICE_USER,
                REASON_CALLING_AE_NOT_RECOGNISED,
                f"calling AE {calling_ae!r} is not on the allow-list",
            )
        networks = self.allowed_callers[calling_ae]
        if networks and not _address_in(address, networks):
            # PS3.8 has no "wrong address" reason; the caller is not recognised at this address.
            return Rejection(
                RESULT_REJECTED_PERMANENT,
                SOURCE_SERVICE_USER,
                REASON_CALLING_AE_NOT_RECOGNISED,
                f"calling AE {calling_ae!r} is not allowed from {address}",
            )
        return None


def _address_in(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d
    return any(ip.version == net.version and ip in net for net in networks)


RejectionListener = Callable[[Rejection, str, str, str], None]


def access_control_handlers(
    policy: AccessPolicy | Callable[[], AccessPolicy],
    on_reject: RejectionListener | None = None,
) -> list[tuple]:
    """evt_handlers for AE.start_server that enforce `policy` (and report each refusal). A
    callable is asked for the policy at every association request, so a reloaded allow-list
    applies to the next association without a restart."""
    current = policy if callable(policy) else (lambda: policy)

    def handle_requested(event: evt.Event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling_ae = str(request.calling_ae_title)
        called_ae = str(request.called_ae_title)
        address = assoc.requestor.address
        rejection = current().check(calling_ae, called_ae, address)
        if rejection is None:
            return
        LOGGER.warning(
            "association refused: %s (calling=%r called=%r from %s; A-ASSOCIATE-RJ "
            "result=%#04x source=%#04x reason=%#04x)",
            rejection.explanation,
            calling_ae,
            called_ae,
            address,
            *rejection.codes,
        )
        if on_reject is not None:
            on_reject(rejection, calling_ae, called_ae, address)
        # Same sequence pynetdicom's ACSE uses for its own rejections: send the RJ, tell the
        # EVT_REJECTED listeners, then wait for the DUL to finish (it closes the socket).
        assoc.acse.send_reject(*rejection.codes)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    return [(evt.EVT_REQUESTED, handle_requested)]


# ---------------------------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class TLSSettings:
    """Files for one TLS endpoint (PEM). For the receiving side `certificate` and `private_key`
    are required; `ca_certificates` are the CAs whose client certificates are accepted.
    For a destination, `ca_certificates` verify the peer and certificate/key are our client
    identity (needed when the peer requires client certificates)."""

    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = True  # receiving side only
    check_hostname: bool = False  # destinations only; DICOM peers are often addressed by IP
    minimum_version: str = "TLSv1_2"  # BCP 195: nothing older than TLS 1.2


def _existing(path: Path | None, setting: str) -> str | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise SecurityConfigError(f"tls.{setting}: file {str(path)!r} does not exist")
    return str(path)


def _minimum_version(settings: TLSSettings) -> ssl.TLSVersion:
    try:
        return ssl.TLSVersion[settings.minimum_version]
    except KeyError as exc:
        raise SecurityConfigError(
            f"tls.minimum_version: {settings.minimum_version!r} (valid: TLSv1_2, TLSv1_3)"
        ) from exc


def _load_identity(context: ssl.SSLContext, settings: TLSSettings) -> None:
    cert = _existing(settings.certificate, "certificate")
    key = _existing(settings.private_key, "private_key")
    if (cert is None) != (key is None):
        raise SecurityConfigError("tls: certificate and private_key must be given together")
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise SecurityConfigError(
                f"tls.certificate/private_key: {cert} and {key} do not load ({exc.reason})"
            ) from exc


def server_ssl_context(settings: TLSSettings) -> ssl.SSLContext:
    """SSLContext for AE.start_server(ssl_context=...)."""
    if settings.certificate is None:
        raise SecurityConfigError("tls.certificate: required to accept TLS associations")
    ca = _existing(settings.ca_certificates, "ca_certificates")
    if settings.require_client_certificate and ca is None:
        raise SecurityConfigError(
            "tls.ca_certificates: required when require_client_certificate is true"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    context.minimum_version = _minimum_version(settings)
    _load_identity(context, settings)
    if settings.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif ca is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_ssl_context(settings: TLSSettings) -> ssl.SSLContext:
    """SSLContext for AE.associate(..., tls_args=(context, server_hostname))."""
    ca = _existing(settings.ca_certificates, "ca_certificates")
    if ca is None:
        raise SecurityConfigError(
            "tls.ca_certificates: required to verify the destination's certificate"
        )
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = _minimum_version(settings)
    context.check_hostname = settings.check_hostname
    _load_identity(context, settings)
    return context
