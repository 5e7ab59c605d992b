"""The facility portal: who ran an experiment (visits), for the alert e-mails.

The API as HPC ASSyncy used it: a token from ``POST {base_url}/api/v1/oauth/token``
(HTTP basic auth with the client name and password; form fields ``username``,
``password``, ``grant_type=password``; the token at ``data.access_token``), then
``GET {base_url}/api/v1/equipment/{id}/visits?access_token=...&start_time=ISO&end_time=ISO``
answering ``data.visits[]``.  On HTTP 401 the client authenticates again, once.

Every failure (no answer within the timeout, an HTTP error, an answer that is
not the JSON described) is a :class:`PortalError` with a one-line message;
the token and the passwords never appear in a message or a log.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from asynchy.errors import ConfigError, PortalError, PortalRefused
from asynchy.keyparse import as_days, as_seconds, is_loopback

if TYPE_CHECKING:
    import urllib.request

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Person:
    first_names: str
    last_name: str
    email: str

    @property
    def name(self) -> str:
        return " ".join(p for p in (self.first_names, self.last_name) if p)

    def as_dict(self) -> dict[str, str]:
        return {"first_names": self.first_names, "last_name": self.last_name, "email": self.email}


@dataclass(frozen=True, slots=True)
class Visit:
    epn: str
    equipment_id: str
    start_time: datetime | None
    end_time: datetime | None
    principal: Person | None
    data_scientists: tuple[Person, ...] = field(default_factory=tuple)


def secret(entry: Mapping[str, Any], key: str, env: Mapping[str, str]) -> str:
    """``key`` given in the config, or read from ``key_file``, or from the variable ``key_env``."""
    if entry.get(key):
        return str(entry[key])
    if entry.get(key + "_file"):
        path = Path(str(entry[key + "_file"])).expanduser()
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"portal {key}_file {path} cannot be read: {exc.strerror}") from None
    name = str(entry.get(key + "_env", ""))
    value = env.get(name)
    if not value:
        raise ConfigError(f"portal {key}_env names {name}, which is not set")
    return value


def person_from(data: Any) -> Person | None:
    """A person from the portal's JSON (``first_names``, ``last_name``, ``email``), or None."""
    if not isinstance(data, dict):
        return None
    return Person(
        str(data.get("first_names") or ""),
        str(data.get("last_name") or ""),
        str(data.get("email") or ""),
    )


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class Portal:
    """One portal (config ``portal``); ``visits`` asks every configured equipment."""

    def __init__(self, config: Mapping[str, Any], env: Mapping[str, str] | None = None) -> None:
        self.base_url = str(config["base_url"]).rstrip("/")
        self.equipment = list(config["equipment"])
        self.visit_days = float(config.get("visit_days", 30))
        self.timeout = float(config.get("timeout", 30))
        self.token_in = str(config.get("token_in", "query"))
        self._env = os.environ if env is None else env
        self._tokens: dict[str, str] = {}

    # ---------------------------------------------------------------- HTTP
    def _call(self, request: urllib.request.Request, what: str) -> Any:
        """One request; the decoded JSON answer, or PortalError.  Never shows the URL's query."""
        from urllib.error import HTTPError, URLError
        from urllib.request import urlopen  # imported when the portal is asked, not with settings

        try:
            with urlopen(request, timeout=self.timeout) as answer:  # noqa: S310 - http(s) only, checked in config
                body = answer.read()
        except HTTPError as exc:
            exc.close()
            raise _HttpStatus(
                exc.code, f"{what}: the portal answered HTTP {exc.code} {exc.reason}"
            ) from None
        except TimeoutError:
            raise PortalError(
                f"{what}: no answer from {self.base_url} within {self.timeout:g} s"
            ) from None
        except URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise PortalError(
                    f"{what}: no answer from {self.base_url} within {self.timeout:g} s"
                ) from None
            raise PortalError(f"{what}: cannot reach {self.base_url}: {reason}") from None
        except OSError as exc:
            raise PortalError(f"{what}: cannot reach {self.base_url}: {exc}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise PortalError(f"{what}: the portal's answer is not JSON") from None

    def login(self, entry: Mapping[str, Any]) -> None:
        """Log in for one equipment (``asynchy check``); PortalError says why not."""
        self._token(entry)

    def _token(self, entry: Mapping[str, Any]) -> str:
        key = str(entry["id"])
        if key in self._tokens:
            return self._tokens[key]
        client = f"{entry['client_name']}:{secret(entry, 'client_password', self._env)}"
        form = urllib.parse.urlencode(
            {
                "username": str(entry["username"]),
                "password": secret(entry, "password", self._env),
                "grant_type": "password",
            }
        ).encode()
        from urllib.request import Request  # imported when the portal is asked

        request = Request(  # noqa: S310
            f"{self.base_url}/api/v1/oauth/token",
            data=form,
            method="POST",
            headers={
                "Authorization": "Basic " + base64.b64encode(client.encode()).decode(),
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
        )
        what = f"portal login for equipment {key}"
        try:
            data = self._call(request, what)
        except _HttpStatus as exc:
            if exc.status in (400, 401, 403):
                raise PortalRefused(
                    f"{what} refused (HTTP {exc.status}): check username, password, client_name "
                    "and client_password"
                ) from None
            raise PortalError(str(exc)) from None
        token = data.get("data", {}).get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise PortalError(f"{what}: the answer has no data.access_token")
        self._tokens[key] = token
        return token

    def _visits_of(self, entry: Mapping[str, Any], start: datetime, end: datetime) -> list[Visit]:
        key = str(entry["id"])
        what = f"portal visits of equipment {key}"
        for attempt in (1, 2):
            token = self._token(entry)
            fields = {"start_time": start.isoformat(), "end_time": end.isoformat()}
            headers = {"Accept": "application/json"}
            if self.token_in == "header":  # noqa: S105 - kept out of URLs (and proxies' logs)
                headers["Authorization"] = f"Bearer {token}"
            else:
                fields["access_token"] = token
            query = urllib.parse.urlencode(fields)
            from urllib.request import Request

            request = Request(  # noqa: S310
                f"{self.base_url}/api/v1/equipment/{urllib.parse.quote(key, safe='')}/visits?{query}",
                headers=headers,
            )
            try:
                data = self._call(request, what)
                break
            except _HttpStatus as exc:
                if exc.status == 401 and attempt == 1:  # the token expired: log in again, once
                    log.info("%s: token refused (HTTP 401); logging in again", what)
                    self._tokens.pop(key, None)
                    continue
                raise PortalError(str(exc)) from None
        visits = data.get("data", {}).get("visits") if isinstance(data, dict) else None
        if not isinstance(visits, list):
            raise PortalError(f"{what}: the answer has no data.visits list")
        out = []
        for item in visits:
            if not isinstance(item, dict) or not item.get("epn"):
                continue
            scientists = item.get("data_scientists") or []
            out.append(
                Visit(
                    epn=str(item["epn"]).strip(),
                    equipment_id=key,
                    start_time=_time(item.get("start_time")),
                    end_time=_time(item.get("end_time")),
                    principal=person_from(item.get("principal_scientist")),
                    data_scientists=tuple(
                        p
                        for p in (
                            person_from(s) for s in scientists if isinstance(scientists, list)
                        )
                        if p is not None
                    ),
                )
            )
        return out

    def visits(self, start: datetime, end: datetime) -> tuple[list[Visit], list[str]]:
        """Visits between start and end over every equipment; and the errors met (one per equipment)."""
        found: list[Visit] = []
        errors: list[str] = []
        for entry in self.equipment:
            try:
                found.extend(self._visits_of(entry, start, end))
            except PortalError as exc:
                errors.append(str(exc))
        return found, errors


class _HttpStatus(PortalError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ the setting
def parse_portal(value: Any) -> dict[str, Any]:
    """The facility portal: ``{base_url, equipment: [{id, username, password, client_name,
    client_password}], visit_days, timeout}``; passwords may instead be ``*_file`` or ``*_env``."""
    if isinstance(value, str):
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError("must be a mapping (YAML) with base_url and equipment") from None
    if not isinstance(value, dict):
        raise ValueError("must be a mapping with base_url and equipment")
    known = {"base_url", "equipment", "visit_days", "timeout", "token_in"}
    unknown = set(value) - known
    if unknown:
        raise ValueError(
            f"has unknown entries {sorted(unknown)} (known: {', '.join(sorted(known))})"
        )
    token_in = str(value.get("token_in", "query")).strip().lower()
    if token_in not in ("query", "header"):
        raise ValueError("token_in must be query or header")
    base = value.get("base_url")
    if not isinstance(base, str) or not base.startswith(("http://", "https://")):
        raise ValueError("needs base_url, e.g. https://portal.example.org")
    if base.startswith("http://") and not is_loopback(urlsplit(base).hostname or ""):
        raise ValueError(
            "base_url must be https:// (plain http:// only to this machine: localhost, "
            "127.0.0.1, ::1): the portal's passwords and token would cross the network in clear"
        )
    equipment = value.get("equipment")
    if not isinstance(equipment, list) or not equipment:
        raise ValueError("needs a list of equipment entries {id, username, password, ...}")
    items = []
    for n, item in enumerate(equipment, 1):
        if not isinstance(item, dict):
            raise ValueError(f"equipment entry {n} must be a mapping")
        entry = {str(k): v for k, v in item.items()}
        for key in ("id", "username", "client_name"):
            if entry.get(key) in (None, ""):
                raise ValueError(f"equipment entry {n} needs {key}")
        for secret in ("password", "client_password"):
            given = [k for k in (secret, secret + "_file", secret + "_env") if entry.get(k)]
            if len(given) != 1:
                raise ValueError(
                    f"equipment entry {n} needs exactly one of {secret}, {secret}_file, {secret}_env"
                )
        items.append(entry)
    return {
        "base_url": base.rstrip("/"),
        "equipment": items,
        "visit_days": as_days(value.get("visit_days", 30)),
        "timeout": as_seconds(value.get("timeout", 30)),
        "token_in": token_in,
    }
