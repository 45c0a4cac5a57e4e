"""Anti-I2V library."""
