-- Scale-out over a Kafka consumer group with cooperative-sticky: members keep
-- their partitions through a change and give up only those that move, in a
-- revoke that runs once the new generation is up.
--
-- A stopping member commits everything before it leaves, and nobody else
-- gives anything up: no duplicate. A join moves survivors' partitions to the
-- newcomer in a second round; the newcomer, with nothing to revoke, rejoins
-- at once, and from then on the mock refuses the commits the survivors make
-- in their revoke (a broker takes them): on a loaded machine the batches
-- they finished meanwhile (up to about 1200 records, as for eager) are read
-- again by the newcomer. See support/kafka_group.lua.
require("support.kafka_group").scenarios({ describe = describe, it = it, setup = setup,
                                           teardown = teardown },
                                         "cooperative", "cooperative-sticky",
                                         { kill = 0, stop = 0, join = 1200 })
