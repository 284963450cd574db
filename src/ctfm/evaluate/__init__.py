"""Scoring trained heads: metrics, bootstrap confidence intervals, inference, leaderboards and reports."""
