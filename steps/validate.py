"""The ``validate`` step: check a value against a JSON Schema and assertions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import Field, field_validator, model_validator

from plait.errors import RunError
from plait.plugins import StepConfig, StepContext, StepType, hookimpl

if TYPE_CHECKING:
    from plait.plugins.types import RegisterStepType

__all__ = ["ValidateConfig", "ValidateStep", "ValidationFailed", "schema_violations"]


class ValidationFailed(RunError):
    """A value broke its schema or assertions; ``violations`` lists every problem found."""

    kind = "validation"
    retryable = False

    def __init__(self, violations: list[str], message: str | None = None) -> None:
        self.violations = violations
        head = message or "validation failed"
        lines = "\n".join(f"  - {v}" for v in violations)
        super().__init__(f"{head}: {len(violations)} violation(s)\n{lines}")

    def to_dict(self) -> dict[str, Any]:
        """The stored error, with the violations as a list."""
        return {**super().to_dict(), "violations": list(self.violations)}


def schema_violations(value: Any, schema: dict[str, Any]) -> list[str]:
    """Every way ``value`` breaks ``schema``, as ``$.path: message`` lines.

    The schema's ``$schema`` picks the draft (2020-12 when absent); ``format`` is checked.
    A schema that is itself invalid yields one line saying why.
    """
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        return [f"the schema is invalid: {exc.json_path}: {exc.message}"]
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [f"{err.json_path}: {err.message}" for err in validator.iter_errors(value)]


class ValidateConfig(StepConfig):
    """The fields of a ``validate`` step."""

    value: Any = Field(alias="validate")
    """The value to check."""
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    """The JSON Schema it must match."""
    assert_: list[Any] = Field(default_factory=list, alias="assert")
    """The rendered assertions; each must be truthy."""
    message: str | None = None
    """Headline of the failure."""

    @field_validator("assert_", mode="before")
    @classmethod
    def _one_assertion(cls, value: Any) -> Any:
        return [value] if not isinstance(value, list) else value

    @model_validator(mode="after")
    def _something_to_check(self) -> ValidateConfig:
        if self.schema_ is None and not self.assert_:
            raise ValueError("give `schema`, `assert` or both: there is nothing to check")
        return self


class ValidateStep(StepType[ValidateConfig]):
    """Check a value against a JSON Schema and/or assertions; fail listing every violation.

    Fields:
        validate: the value to check (usually a template such as ``${steps.fetch.output}``).
        schema: a JSON Schema (draft 2020-12 unless ``$schema`` says otherwise).
        assert: expressions that must all be true, written bare (``"value.count > 0"``) or as
            ``${...}``; a failing one is reported with its source text.
        message: a headline for the failure (default: ``validation failed``).

    Give ``schema``, ``assert`` or both. A failure is a ``validation`` error, never retried.

    Output: the value, unchanged.

    Example::

        - id: check
          validate: "${steps.review.output}"
          schema: {type: object, required: [score], properties: {score: {type: number}}}
          assert: ["steps.review.output.score <= 1"]
    """

    key = "validate"
    description = "Check a value against a JSON Schema and assertions."
    uses_capacity = False
    inline = True
    expressions = frozenset({"assert"})

    Config = ValidateConfig

    def output_schema(
        self,
        config: Mapping[str, Any],
        tool_output_schema: Callable[[str], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        """Its ``schema``: the output is the value, which matched it."""
        schema = config.get("schema")
        return schema if isinstance(schema, dict) else None

    async def run(self, ctx: StepContext, config: ValidateConfig) -> Any:
        """Check the value and return it, or raise with every violation."""
        violations = schema_violations(config.value, config.schema_) if config.schema_ else []
        sources = ctx.definition.get("assert")
        if not isinstance(sources, list):
            sources = [sources]
        for i, ok in enumerate(config.assert_):
            if not ok:
                source = sources[i] if i < len(sources) else f"assert[{i}]"
                violations.append(f"assertion failed: {source}")
        if violations:
            raise ValidationFailed(violations, config.message)
        return config.value


@hookimpl
def register_step_types(register: RegisterStepType) -> None:
    """Register the ``validate`` step type."""
    register(ValidateStep)
