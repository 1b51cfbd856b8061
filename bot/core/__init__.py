"""The platform-free core: it builds `Message`s and handles `Interaction`s."""
