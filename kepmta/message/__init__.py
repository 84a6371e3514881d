"""Reading RFC 5322 messages and MIME entities from their octets: the one reader kepmta has.

Signatures, digests and IMAP sections name exact byte ranges of a message, so everything here works
on offsets into the stored octets and never re-serialises anything:

* `buffer`: the octets, in memory or read from a file on demand (`Buffer`, `FileBuffer`);
* `header`: header blocks and fields, unfolded (RFC 5322 §2.2);
* `words`: RFC 2047 encoded-words;
* `addresses`: address lists with comments and groups (RFC 5322 §3.4, §3.2.2);
* `content`: Content-Type and Content-Disposition with their parameters (RFC 2045 §5.1, RFC 2231);
* `multipart`: body parts of a multipart body by offsets (RFC 2046 §5.1.1);
* `transfer`: undoing a Content-Transfer-Encoding (RFC 2045 §6);
* `entity`: a whole message as a tree of entities (RFC 2045, RFC 2046).
"""
