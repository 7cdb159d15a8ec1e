"""Parameters and secrets: where a value comes from, how it is generated, and how it stays masked.

A parameter's value is looked up at launch, first source found wins:

1. the value given in code (`add_parameter(..., value=...)`),
2. the environment variable `PARAMETERS__<NAME>` (upper-cased, `-` as `_`),
3. the user secrets file, keyed by stack name (`homunculy-nb secrets set STACK NAME VALUE`),
4. a `.env` file beside the stack file (`PARAMETERS__<NAME>=...` or `<NAME>=...`),
5. the declared `default`,
6. a generated password, saved to the secrets file so later launches reuse it (`generate=True`).

The secrets file is `~/.config/homunculy-nb/secrets.json` (mode 0600), or the path in the environment
variable `HOMUNCULY_NB_SECRETS_FILE`.
"""

from __future__ import annotations

import json
import os
import re
import secrets as _secrets
import string
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from homunculy_nb.errors import ConfigurationError, ParameterError

if TYPE_CHECKING:
    from homunculy_nb.stack import Stack

SECRETS_FILE_ENV = "HOMUNCULY_NB_SECRETS_FILE"
MASK = "********"
GENERATED_LENGTH = 24

_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# Letters and digits only, so a generated password is safe in URIs, shells and YAML without quoting.
_GENERATED_ALPHABET = string.ascii_letters + string.digits


class Secret:
    """A secret value whose repr and str are masked; `reveal()` returns the value itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError(f"A Secret holds a str, not {type(value).__name__}.")
        self._value = value

    def reveal(self) -> str:
        """Return the unmasked value."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __format__(self, format_spec: str) -> str:
        return format(MASK, format_spec)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return _secrets.compare_digest(self._value, other._value)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self):
        raise TypeError("A Secret cannot be pickled; call reveal() where the value is needed.")


def env_name(name: str) -> str:
    """Return `name` in environment-variable form: upper-cased, `-` and `.` as `_`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name).upper()


def parameter_env_var(name: str) -> str:
    """Return the environment variable a parameter is read from, e.g. `PARAMETERS__DB_PASSWORD`."""
    return f"PARAMETERS__{env_name(name)}"


# -- the user secrets file ------------------------------------------------------------------------


def secrets_file() -> Path:
    """Return the path of the user secrets file."""
    override = os.environ.get(SECRETS_FILE_ENV)
    if override:
        return Path(override).expanduser()

    config_home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config_home) / "homunculy-nb" / "secrets.json"


def _read_secrets_file() -> dict[str, dict[str, str]]:
    path = secrets_file()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"The secrets file {path} is not valid JSON ({exc.msg} at line {exc.lineno}). "
            "Fix or delete it; `homunculy-nb secrets set` writes it again."
        ) from exc

    if not isinstance(data, dict):
        raise ConfigurationError(f"The secrets file {path} must contain a JSON object keyed by stack name.")
    return data


def _write_secrets_file(data: dict[str, dict[str, str]]) -> None:
    path = secrets_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    # Write a private temporary file and rename it, so the file is never briefly world-readable or torn.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secrets-", suffix=".json")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def get_secret(stack: str, name: str) -> Secret | None:
    """Return the value stored for parameter `name` of `stack`, or None."""
    value = _read_secrets_file().get(stack, {}).get(name)
    return None if value is None else Secret(value)


def set_secret(stack: str, name: str, value: str | Secret) -> None:
    """Store `value` for parameter `name` of `stack` in the user secrets file."""
    if not _NAME_PATTERN.match(name):
        raise ParameterError(f"Invalid parameter name {name!r}: use letters, digits, `-` and `_`.")

    data = _read_secrets_file()
    data.setdefault(stack, {})[name] = Secret(value).reveal()
    _write_secrets_file(data)


def remove_secret(stack: str, name: str) -> bool:
    """Remove parameter `name` of `stack` from the secrets file; return whether it was there."""
    data = _read_secrets_file()
    values = data.get(stack, {})
    if name not in values:
        return False

    del values[name]
    if not values:
        del data[stack]
    _write_secrets_file(data)
    return True


def list_secrets(stack: str | None = None) -> dict[str, list[str]]:
    """Return the stored parameter names per stack (never the values)."""
    data = _read_secrets_file()
    if stack is not None:
        data = {stack: data.get(stack, {})}
    return {stack_name: sorted(values) for stack_name, values in data.items()}


def generate_password(length: int = GENERATED_LENGTH) -> str:
    """Return a random password of letters and digits."""
    return "".join(_secrets.choice(_GENERATED_ALPHABET) for _ in range(length))


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a `.env` file: `KEY=VALUE` lines, `#` comments, optional `export` and quotes."""
    values: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return values

    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[len("export "):]

        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


# -- parameters ---------------------------------------------------------------------------------


class Parameter:
    """A named value supplied at launch: a setting or a secret.

    Declared with `Stack.add_parameter`. Reading `.value` looks the sources up each time, so a value set
    with `homunculy-nb secrets set` after declaration is found by the next `up()`.
    """

    kind = "parameter"

    def __init__(self, stack: Stack, name: str, *, secret: bool = False, default: str | None = None,
                 generate: bool = False, value: str | None = None) -> None:
        if not _NAME_PATTERN.match(name):
            raise ParameterError(f"Invalid parameter name {name!r}: use letters, digits, `-` and `_`, "
                                 "starting with a letter.")
        if generate and not secret:
            raise ParameterError(f"Parameter `{name}` uses generate=True, which only makes sense for a "
                                 "secret. Pass secret=True too.")

        self.stack = stack
        self.name = name
        self.secret = secret
        self.default = None if default is None else str(default)
        self.generate = generate
        self._code_value = None if value is None else Secret(value) if secret else str(value)

    @property
    def env_var(self) -> str:
        """The environment variable this parameter is read from."""
        return parameter_env_var(self.name)

    def set_command(self) -> str:
        """Return the shell command that stores a value for this parameter."""
        return f"homunculy-nb secrets set {self.stack.name} {self.name} VALUE"

    def lookup(self) -> tuple[str | None, str | None]:
        """Return (value, source) from the first source that has one, or (None, None).

        Sources: "code", "environment", "secrets file", ".env", "default". Generation is left to
        `value`, because it writes the secrets file.
        """
        if self._code_value is not None:
            return _unmask(self._code_value), "code"

        from_environment = os.environ.get(self.env_var)
        if from_environment is not None:
            return from_environment, "environment"

        stored = get_secret(self.stack.name, self.name)
        if stored is not None:
            return stored.reveal(), "secrets file"

        source_dir = self.stack.source_dir
        if source_dir is not None:
            dotenv = read_env_file(Path(source_dir) / ".env")
            for key in (self.env_var, env_name(self.name)):
                if key in dotenv:
                    return dotenv[key], ".env"

        if self.default is not None:
            return self.default, "default"
        return None, None

    @property
    def source(self) -> str | None:
        """Where the value comes from now ("code", "environment", ...), "generated" or None."""
        _, source = self.lookup()
        if source is None and self.generate:
            return "generated"
        return source

    @property
    def has_value(self) -> bool:
        """Whether `.value` would succeed without raising."""
        return self.source is not None

    @property
    def value(self) -> Secret | str:
        """The value from the first source that has one: a `Secret` for secret parameters.

        Raises `ParameterError` naming the parameter and the command that sets it when there is none.
        """
        found, _ = self.lookup()
        if found is None and self.generate:
            found = generate_password()
            set_secret(self.stack.name, self.name, found)

        if found is None:
            raise ParameterError(
                f"Parameter `{self.name}` of stack `{self.stack.name}` has no value. Set it with "
                f"`{self.set_command()}`, or export {self.env_var}."
            )
        return Secret(found) if self.secret else found

    def describe(self) -> str:
        """Return a one-line description with no secret value."""
        return f"parameter `{self.name}`" + (" (secret)" if self.secret else "")

    def __repr__(self) -> str:
        flags = ", secret=True" if self.secret else ""
        return f"Parameter({self.name!r}{flags})"


def _unmask(value: str | Secret) -> str:
    return value.reveal() if isinstance(value, Secret) else value
