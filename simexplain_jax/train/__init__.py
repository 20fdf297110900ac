"""Pure train steps and the shared training loop."""
