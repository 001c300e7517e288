"""Gateway: the public SearchService and the AdminService."""
