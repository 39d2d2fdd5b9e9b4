"""Hydra discovers launchers under the `hydra_plugins` namespace: `hydra/launcher=cohort` lives here."""
