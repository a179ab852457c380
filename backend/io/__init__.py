"""Reading task images (downloads, local files), writing outputs, the Label Studio API client."""
