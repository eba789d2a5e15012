"""Input and output guardrails: personal data, secrets, prompt injection, denied topics.

The chain stages live in middleware/input_guardrails.py and middleware/output_guardrails.py;
this package holds the detectors, the policy sections (settings) and the engine they share.
"""

from gateway.guardrails.findings import Finding
from gateway.guardrails.injection import InjectionFinding, scan_chunks
from gateway.guardrails.settings import InputGuardrailsPolicy, OutputGuardrailsPolicy

__all__ = ["Finding", "InjectionFinding", "InputGuardrailsPolicy", "OutputGuardrailsPolicy", "scan_chunks"]
