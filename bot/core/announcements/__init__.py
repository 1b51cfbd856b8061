"""Announcements: the plan (milestones to occurrences), audiences, templates, reports, acks."""
