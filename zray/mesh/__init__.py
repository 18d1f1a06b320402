"""The cluster mesh: who may connect (auth), what this machine knows of its clusters
(records), and the first words between nodes (join)."""
