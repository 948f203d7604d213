"""mechunlearn.evals"""
