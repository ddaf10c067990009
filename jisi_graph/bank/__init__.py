"""The embedding bank: row schema, loaders, building and storage."""
