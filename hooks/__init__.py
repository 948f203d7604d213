"""Hook functions (TransformerLens fn(activation, hook)) used by methods, attacks and diagnostics."""
