// Every malformed-input failure of the decoder is a GsvError (what was wrong, and where).

export class GsvError extends Error {
  constructor(message) {
    super(message);
    this.name = "GsvError";
  }
}
