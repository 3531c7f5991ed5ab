"""Templates: ``${ expr }`` compiled once per workflow version and rendered in a sandbox."""

from plait.templates.engine import CONTEXT_ROOTS, Template, TemplateEngine
from plait.templates.sandbox import PlaitSandbox, TemplateLimits

__all__ = ["CONTEXT_ROOTS", "PlaitSandbox", "Template", "TemplateEngine", "TemplateLimits"]
