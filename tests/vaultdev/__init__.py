"""Tests of vaultdev over HTTP through hvac (most also run unchanged against real Vault)."""
