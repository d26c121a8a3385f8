"""The context-encryption tool: Transit client, schemes and classification, the engine,
preflight, verify, settings, reporting and the ``context-encryption`` command."""
