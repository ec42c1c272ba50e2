"""The A1111 prompt language and text conditioning."""
