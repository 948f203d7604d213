"""mechunlearn.diagnostics"""
