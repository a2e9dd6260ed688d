"""The tools programs call: Python callables loaded from `module:attr`, and the circuit
breakers that guard them."""
