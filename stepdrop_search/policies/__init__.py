"""Skip policies: one registry (``POLICIES``), one JSON schema and one validator (``policies.io``)."""

from stepdrop_search.policies import kinds as _kinds  # noqa: F401  (registers the built-in kinds)
from stepdrop_search.policies.base import POLICIES, Policy, policy_class
from stepdrop_search.policies.io import PolicyDocument, load_policy, save_policy

__all__ = ["POLICIES", "Policy", "PolicyDocument", "load_policy", "policy_class", "save_policy"]
