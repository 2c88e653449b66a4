"""World builders the tests share."""
