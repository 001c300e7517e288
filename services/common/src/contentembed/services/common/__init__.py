"""Runtime shared by every contentembed service: server factory, health, reflection,
config, error mapping, metrics, logging and shutdown. Services differ only in their
domain code."""
