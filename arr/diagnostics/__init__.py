"""Training diagnostics: representation alignment between the policy and the judge (arr.diagnostics.alignment)."""
