"""Unlearning methods: one small file each, one registry."""
