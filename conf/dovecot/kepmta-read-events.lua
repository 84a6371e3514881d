-- Dovecot push-notification Lua driver for kepmta: report MessageRead events.
--
-- Dovecot runs this inside the IMAP process, synchronously, as the mail user: the client's reply
-- waits for it. So it does nothing but append one line per read to the day's spool file,
--
--     <user> TAB <mailbox> TAB <uidvalidity> TAB <uid> LF
--
-- in the folder named by the plugin setting kepmta_read_spool; kepmta (kepmta/hooks/dovecot.py)
-- finds the message through dovecot-uidlist and makes the ContentHandover evidence.
-- The file is opened for appending (O_APPEND) and unbuffered, so each line is a single write(2) at
-- the end of the file, never interleaved with a line from another IMAP process.

local spool = nil

function dovecot_lua_notify_begin_txn(user)
  if spool == nil then
    spool = user:plugin_getenv("kepmta_read_spool")
  end
  return { user = user.username, lines = {} }
end

-- A MessageRead event carries mailbox, uid and uid_validity only; the numbers arrive as floats.
function dovecot_lua_notify_event_message_read(ctx, event)
  local line = string.format("%s\t%s\t%d\t%d\n", ctx.user, event.mailbox, event.uid_validity, event.uid)
  -- A control character in a name could forge a second line (another user's read): refuse it.
  if select(2, line:gsub("%c", "")) ~= 4 then
    dovecot.i_error("kepmta read events: control character in user or mailbox name, event dropped")
    return
  end
  table.insert(ctx.lines, line)
end

-- Only a committed transaction really set \Seen.
function dovecot_lua_notify_end_txn(ctx, success)
  if not success or #ctx.lines == 0 then
    return
  end
  if spool == nil or spool == "" then
    dovecot.i_error("kepmta read events: plugin setting kepmta_read_spool is not set")
    return
  end
  local path = spool .. "/" .. os.date("!%Y%m%d") .. ".events"
  local f, err = io.open(path, "a")
  if f == nil then
    dovecot.i_error("kepmta read events: " .. tostring(err))
    return
  end
  f:setvbuf("no")
  for _, line in ipairs(ctx.lines) do
    f:write(line)
  end
  f:close()
end
