"""Container config: the keys a native container takes, their values, and a received config's translation.

Apart from the runtime interface (hostagent/runtimes/base.py) because both runtimes and the API share these
checks, and the interface file should hold the interface.
"""

from __future__ import annotations

from typing import Any

from orchapi.errors import BadRequest

#: container config keys the agent accepts (``user.*`` keys are free-form, as in LXD)
KNOWN_CONFIG_KEYS = {
    "security.privileged": ("true", "false"),
    "boot.stop_timeout": None,
    "evacuate": ("auto", "migrate", "stop", "skip"),
}


def string_config(config: Any) -> dict[str, str]:
    """Config with string values (booleans as true/false), the form every runtime checks further."""
    if not isinstance(config, dict):
        raise BadRequest("container config must be a mapping of keys to strings")
    out: dict[str, str] = {}
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, bool)):
            raise BadRequest(f"invalid config entry {key!r}: keys and values must be strings")
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def check_known_value(key: str, value: str) -> None:
    """Refuse a value a key of :data:`KNOWN_CONFIG_KEYS` does not take."""
    allowed = KNOWN_CONFIG_KEYS[key]
    if allowed is not None and value not in allowed:
        raise BadRequest(f"invalid value {value!r} for {key}", "expected one of: " + ", ".join(allowed))
    if key == "boot.stop_timeout" and not (value.isascii() and value.isdigit()):  # "²".isdigit()
        raise BadRequest(f"invalid value {value!r} for {key}", "expected a number of seconds")


def validate_config(config: dict[str, Any]) -> dict[str, str]:
    """Check container config keys and values; returns the config with string values."""
    out = string_config(config)
    for key, value in out.items():
        if key.startswith("user."):
            continue
        if key not in KNOWN_CONFIG_KEYS:
            raise BadRequest(
                f"unknown config key {key!r}", "known keys: " + ", ".join(sorted(KNOWN_CONFIG_KEYS))
            )
        check_known_value(key, value)
    return out


#: LXD keys a native container does without: image description and LXD's own bookkeeping
_LXD_ONLY_PREFIXES = ("image.", "volatile.")


def import_config_native(config: dict[str, Any]) -> dict[str, str]:
    """A received config for a native container: LXD's bookkeeping dropped, its evacuate policy kept,
    anything else native containers cannot honour refused (so nothing is silently lost)."""
    if not isinstance(config, dict):
        raise BadRequest("migration header: container config must be a mapping")
    out: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str) or key.startswith(_LXD_ONLY_PREFIXES):
            continue
        out["evacuate" if key in ("cluster.evacuate", "user.orch.evacuate") else key] = value
    if out.get("evacuate") == "live-migrate":
        out["evacuate"] = "migrate"
    unsupported = sorted(k for k in out if k not in KNOWN_CONFIG_KEYS and not k.startswith("user."))
    if unsupported:
        raise BadRequest(
            f"the native runtime cannot honour config key(s) {', '.join(unsupported)}",
            "unset them on the source first, or move the container to an LXD host",
        )
    return validate_config(out)
