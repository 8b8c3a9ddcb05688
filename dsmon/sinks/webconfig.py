"""TLS and basic auth for the agent's HTTP endpoints, in Prometheus exporter-toolkit's format:

    tls_server_config:
      cert_file: /etc/dsmon/tls.crt
      key_file: /etc/dsmon/tls.key
    basic_auth_users:
      prometheus: $2y$10$...        # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

Only for agents that must listen beyond localhost; the default loopback bind needs neither.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass, field

import yaml

TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "min_version"}
TOP_KEYS = {"tls_server_config", "basic_auth_users"}


class WebConfigError(Exception):
    pass


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    _verified: dict[tuple[str, str], bool] = field(default_factory=dict)

    def authorized(self, header: str | None) -> bool:
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        # bcrypt is slow on purpose; remember good answers so scrapes stay cheap.
        key = (user, password)
        if key not in self._verified:
            import bcrypt
            self._verified[key] = bcrypt.checkpw(password.encode(), hashed)
            if len(self._verified) > 64:
                self._verified.clear()
        return self._verified[key]


def load_web_config(path: str) -> WebConfig:
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict) or set(document) - TOP_KEYS:
        raise WebConfigError(f"{path}: allowed keys are {', '.join(sorted(TOP_KEYS))}")
    config = WebConfig()
    tls = document.get("tls_server_config")
    if tls:
        unknown = set(tls) - TLS_KEYS
        if unknown or "cert_file" not in tls or "key_file" not in tls:
            raise WebConfigError(f"{path}: tls_server_config needs cert_file and key_file "
                                 f"(allowed: {', '.join(sorted(TLS_KEYS))})")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(tls["cert_file"], tls["key_file"])
            if tls.get("client_ca_file"):
                context.load_verify_locations(tls["client_ca_file"])
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"{path}: cannot load the TLS certificate or key: {exc}") from None
        config.ssl_context = context
    users = document.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError(f"{path}: basic_auth_users maps user names to bcrypt hashes")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"{path}: basic_auth_users.{user} is not a bcrypt hash")
        config.users[str(user)] = hashed.encode()
    return config
