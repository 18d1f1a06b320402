"""Actors arrive with issue 3: classes, handles, and mailboxes in the node agent."""
