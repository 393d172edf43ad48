/* placeholder replaced by the Kafka connector work */
int main(void) { return 1; }
