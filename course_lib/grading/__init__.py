"""Releasing, autograding and giving feedback on the course's exercises (built on nbgrader)."""
